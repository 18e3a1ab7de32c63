import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { TokenNotValidError } from '../../../src/errors.ts'
import { problems, TokenSchema } from '../../../src/schemas.ts'
import { findSessionUser } from '../../../src/services/sessions.ts'

export const VerifyBodySchema = Type.Object({ token: TokenSchema }, { additionalProperties: false })

const verify: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/verify', {
    schema: {
      tags: ['token'],
      summary: 'Check a token: signature, claims, and that its session is still active',
      body: VerifyBodySchema,
      response: { 200: Type.Object({}, { additionalProperties: false }), ...problems(400, 401, 413, 415) }
    }
  }, async (request) => {
    const claims = await fastify.keys.verify(request.body.token)
    // Stricter than simplejwt: a token of a logged-out or revoked session is not valid.
    const user = await findSessionUser(fastify.db, claims.sid, claims.user_id, fastify.tokens.now())
    if (user === undefined) throw new TokenNotValidError()
    return {}
  })
}

export default verify
