import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdentifierSchema, PasswordSchema, problems, TokenPairSchema } from '../../../src/schemas.ts'
import { startSession } from '../../../src/services/sessions.ts'
import { authenticateUser } from '../../../src/services/users.ts'

export const ObtainBodySchema = Type.Object({
  // simplejwt's field name; an email is accepted too.
  username: IdentifierSchema,
  password: PasswordSchema
}, { additionalProperties: false })

// simplejwt's TokenObtainPairView: tokens in the body only, no cookies (machine clients).
const obtain: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    schema: {
      tags: ['token'],
      summary: 'Obtain an access and refresh token pair',
      body: ObtainBodySchema,
      response: { 200: TokenPairSchema, ...problems(400, 401, 413, 415, 503) }
    }
  }, async (request) => {
    const { db, config, tokens } = fastify
    const user = await authenticateUser(db, request.body.username, request.body.password, config.BCRYPT_COST, tokens.now())
    return await startSession(db, tokens, user.id, { userAgent: request.headers['user-agent'] ?? null, ip: request.ip })
  })
}

export default obtain
