import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { AccessTokenSecurity, PasskeyNameSchema, passkeyOut, PasskeySchema, problems, UuidParamsSchema } from '#src/schemas.ts'

/** The signed-in user's passkeys (docs/passkeys.md): list, rename, remove. */
const passkeys: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/passkeys', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['passkeys'],
      summary: 'The signed-in user\'s passkeys, the oldest first',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ passkeys: Type.Array(PasskeySchema) }), ...problems(400, 401, 503) }
    }
  }, async (request) => ({ passkeys: (await fastify.passkeys.list(request.user.id)).map(passkeyOut) }))

  fastify.patch('/passkeys/:id', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['passkeys'],
      summary: 'Rename a passkey',
      security: AccessTokenSecurity,
      params: UuidParamsSchema,
      body: Type.Object({ name: PasskeyNameSchema }, { additionalProperties: false }),
      response: { 204: Type.Null(), ...problems(400, 401, 404, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await fastify.passkeys.rename(request.user.id, request.params.id.toLowerCase(), request.body.name, callerOf(request))
    return reply.code(204).send(null)
  })

  fastify.delete('/passkeys/:id', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['passkeys'],
      summary: 'Remove a passkey (an aal2 sign-in within 10 minutes); refused when it is the last way into the account',
      security: AccessTokenSecurity,
      params: UuidParamsSchema,
      response: { 204: Type.Null(), ...problems(400, 401, 403, 404, 409, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await fastify.passkeys.remove(request.user.id, request.claims!, request.params.id.toLowerCase(), callerOf(request))
    return reply.code(204).send(null)
  })
}

export default passkeys
