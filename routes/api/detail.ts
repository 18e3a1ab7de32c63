import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AccessTokenSecurity, problems, UserSchema } from '#src/schemas.ts'

const detail: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/detail', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['account'],
      summary: 'The signed-in user (Bearer access token or access cookie)',
      security: AccessTokenSecurity,
      response: {
        200: Type.Object({ message: Type.String(), user: UserSchema }),
        ...problems(400, 401, 503)
      }
    }
  }, async (request) => ({ message: 'Welcome to Page', user: request.user }))
}

export default detail
