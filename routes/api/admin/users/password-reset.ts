import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { operatorOf } from '#src/http/caller.ts'
import { adminSecurity, EmptySchema, problems, ReasonSchema, UserIdParamsSchema } from '#src/schemas.ts'
import { ADMIN_SCOPES } from '#src/services/oauth/clients.ts'

/** An operator starts a user's recovery by mail: with the password reset (APP_RESET_URL) only. */
const passwordReset: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/:id/password-reset', {
    onRequest: fastify.requireAdmin(ADMIN_SCOPES.usersWrite),
    schema: {
      tags: ['admin'],
      summary: 'Send a user the password reset mail: its link and code reach only their inbox; 409 while they are disabled, or when the per-account mail limit holds it back',
      security: adminSecurity(ADMIN_SCOPES.usersWrite),
      params: UserIdParamsSchema,
      body: Type.Object({ reason: ReasonSchema }, { additionalProperties: false }),
      response: { 202: EmptySchema, ...problems(400, 401, 403, 404, 409, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await fastify.admin.sendPasswordReset(Number(request.params.id), request.body, operatorOf(request))
    return reply.code(202).send({})
  })
}

export default passwordReset
