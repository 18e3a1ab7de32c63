import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { TokenNotValidError } from '#src/errors.ts'
import { EmptySchema, problems, TokenSchema } from '#src/schemas.ts'
import { perIp } from '#src/http/limits.ts'

export const VerifyBodySchema = Type.Object({ token: TokenSchema }, { additionalProperties: false })

const verify: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/verify', {
    config: { limits: [perIp('token', fastify.config.RATE_LIMIT_TOKEN_MAX)] },
    schema: {
      tags: ['token'],
      summary: 'Check a token: signature, claims, and that its session (or its service client) is still active',
      body: VerifyBodySchema,
      response: { 200: EmptySchema, ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request) => {
    // Stricter than simplejwt: a token of a revoked session, a spent refresh token, or a service
    // token of a disabled client, is not valid.
    if (await fastify.auth.identify(await fastify.auth.verifyAny(request.body.token)) === undefined) throw new TokenNotValidError()
    return {}
  })
}

export default verify
