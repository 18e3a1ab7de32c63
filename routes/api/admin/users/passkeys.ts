import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { operatorOf } from '#src/http/caller.ts'
import { adminSecurity, passkeyOut, PasskeySchema, problems, ReasonQuerySchema, UserIdParamsSchema } from '#src/schemas.ts'
import { ADMIN_SCOPES } from '#src/services/oauth/clients.ts'

/** A user's passkeys, for operators: with passkeys (WEBAUTHN_RP_ID) only. */
const passkeys: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/:id/passkeys', {
    onRequest: fastify.requireAdmin(ADMIN_SCOPES.usersRead),
    schema: {
      tags: ['admin'],
      summary: 'A user\'s passkeys, the oldest first',
      security: adminSecurity(ADMIN_SCOPES.usersRead),
      params: UserIdParamsSchema,
      response: { 200: Type.Object({ passkeys: Type.Array(PasskeySchema) }), ...problems(400, 401, 403, 404, 503) }
    }
  }, async (request) => ({ passkeys: (await fastify.admin.passkeysOf(Number(request.params.id), operatorOf(request))).map(passkeyOut) }))

  fastify.delete('/:id/passkeys/:passkey', {
    onRequest: fastify.requireAdmin(ADMIN_SCOPES.usersWrite),
    schema: {
      tags: ['admin'],
      summary: 'Remove a passkey of a user (a lost device); the user is mailed',
      security: adminSecurity(ADMIN_SCOPES.usersWrite),
      params: Type.Composite([UserIdParamsSchema, Type.Object({ passkey: Type.String({ pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' }) })]),
      querystring: ReasonQuerySchema,
      response: { 204: Type.Null(), ...problems(400, 401, 403, 404, 409, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await fastify.admin.removePasskey(Number(request.params.id), { passkeyId: request.params.passkey.toLowerCase(), reason: request.query.reason }, operatorOf(request))
    return reply.code(204).send(null)
  })
}

export default passkeys
