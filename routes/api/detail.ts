import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AccessTokenSecurity, problems, UserSchema } from '#src/schemas.ts'

const DetailUserSchema = Type.Composite([UserSchema, Type.Object({ email_verified: Type.Boolean() })])

const detail: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/detail', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['account'],
      summary: 'The signed-in user (Bearer access token or access cookie)',
      security: AccessTokenSecurity,
      response: {
        200: Type.Object({ message: Type.String(), user: DetailUserSchema }),
        ...problems(400, 401, 503)
      }
    }
  }, async (request) => {
    const { id, username, email, email_verified_at: verifiedAt } = request.user
    return { message: 'Welcome to Page', user: { id, username, email, email_verified: verifiedAt !== null } }
  })
}

export default detail
