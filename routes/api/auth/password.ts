import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { AccessTokenSecurity, PasswordSchema, problems } from '#src/schemas.ts'
import { credentialLimits } from '#src/http/limits.ts'

export const PasswordChangeBodySchema = Type.Object({
  current_password: PasswordSchema,
  new_password: PasswordSchema
}, { additionalProperties: false, 'x-password-policy': { password: 'new_password' } })

const password: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/password', {
    onRequest: [fastify.authenticate],
    // Guessing the current password with a stolen token counts against the account.
    config: { limits: credentialLimits(fastify.config, async (request) => `user:${request.user.id}`) },
    schema: {
      tags: ['account'],
      summary: 'Change the password; every other session of the user ends',
      security: AccessTokenSecurity,
      body: PasswordChangeBodySchema,
      response: { 204: Type.Null(), ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    await fastify.accounts.changePassword(request.user, request.body.current_password, request.body.new_password, callerOf(request))
    return reply.code(204).send(null)
  })
}

export default password
