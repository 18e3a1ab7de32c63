import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { clientOf } from '#src/lib/client.ts'
import { normalizeFields } from '#src/lib/usernames.ts'
import { IdentifierSchema, PasswordSchema, problems, TokenPairSchema } from '#src/schemas.ts'

export const ObtainBodySchema = Type.Object({
  // simplejwt's field name; an email is accepted too.
  username: IdentifierSchema,
  password: PasswordSchema
}, { additionalProperties: false })

// simplejwt's TokenObtainPairView: tokens in the body only, no cookies (machine clients).
const obtain: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    preValidation: normalizeFields('username'),
    schema: {
      tags: ['token'],
      summary: 'Obtain an access and refresh token pair',
      body: ObtainBodySchema,
      response: { 200: TokenPairSchema, ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request) => {
    const { user, pair } = await fastify.accounts.login(request.body.username, request.body.password, clientOf(request))
    request.log.info({ userId: user.id }, 'login')
    return pair
  })
}

export default obtain
