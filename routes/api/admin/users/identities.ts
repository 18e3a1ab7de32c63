import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { operatorOf } from '#src/http/caller.ts'
import { adminSecurity, IdentitySchema, problems, UserIdParamsSchema } from '#src/schemas.ts'
import { ADMIN_SCOPES } from '#src/services/oauth/clients.ts'

/** A user's linked identities of upstream providers, for operators: with the sign-in with identity providers (OIDC_PROVIDERS) only. */
const identities: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/:id/identities', {
    onRequest: fastify.requireAdmin(ADMIN_SCOPES.usersRead),
    schema: {
      tags: ['admin'],
      summary: 'A user\'s linked identities of identity providers, the oldest first',
      security: adminSecurity(ADMIN_SCOPES.usersRead),
      params: UserIdParamsSchema,
      response: { 200: Type.Object({ identities: Type.Array(IdentitySchema) }), ...problems(400, 401, 403, 404, 503) }
    }
  }, async (request) => {
    const list = await fastify.admin.identitiesOf(Number(request.params.id), operatorOf(request))
    return { identities: list.map((i) => ({ ...i, created_at: i.created_at.toISOString(), last_used_at: i.last_used_at?.toISOString() ?? null })) }
  })
}

export default identities
