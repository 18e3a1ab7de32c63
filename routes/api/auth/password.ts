import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AccessTokenSecurity, PasswordSchema, problems } from '#src/schemas.ts'

export const PasswordChangeBodySchema = Type.Object({
  current_password: PasswordSchema,
  new_password: PasswordSchema
}, { additionalProperties: false, 'x-password-policy': { password: 'new_password' } })

const password: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/password', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['account'],
      summary: 'Change the password; every other session of the user ends',
      security: AccessTokenSecurity,
      body: PasswordChangeBodySchema,
      response: { 204: Type.Null(), ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const { user } = request
    await fastify.accounts.changePassword(user, request.body.current_password, request.body.new_password)
    request.log.info({ userId: user.id, sessionId: user.sessionId }, 'password changed')
    return reply.code(204).send(null)
  })
}

export default password
