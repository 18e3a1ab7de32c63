import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { AccessTokenSecurity, problems, UuidParamsSchema } from '#src/schemas.ts'

const FactorSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  kind: Type.Literal('totp'),
  created_at: Type.String({ format: 'date-time' }),
  verified: Type.Boolean()
})

/** The signed-in user's second factors (docs/mfa.md): GET lists them, DELETE removes one. */
const factors: FastifyPluginAsyncTypebox = async (fastify) => {
  const { mfa } = fastify

  fastify.get('/factors', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'The signed-in user\'s second factors',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ factors: Type.Array(FactorSchema) }), ...problems(400, 401, 503) }
    }
  }, async (request) => ({
    factors: (await mfa.list(request.user.id)).map((f) => ({ ...f, created_at: f.created_at.toISOString() }))
  }))

  fastify.delete('/factors/:id', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'Remove a second factor: a verified one from an aal2 session signed in or stepped up within 10 minutes',
      security: AccessTokenSecurity,
      params: UuidParamsSchema,
      response: { 204: Type.Null(), ...problems(400, 401, 403, 404, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await mfa.remove(request.user.id, request.claims!, request.params.id, callerOf(request))
    return reply.code(204).send(null)
  })
}

export default factors
