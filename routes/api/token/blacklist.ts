import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { EmptySchema, problems, RefreshTokenBodySchema, RefreshTokenSecurity } from '#src/schemas.ts'
import { perIp } from '#src/http/limits.ts'

// simplejwt's TokenBlacklistView: sign out with the refresh token.
const blacklist: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/blacklist', {
    config: { limits: [perIp('token', fastify.config.RATE_LIMIT_TOKEN_MAX)] },
    schema: {
      tags: ['token'],
      summary: 'End the session of a refresh token (body, else the refresh cookie)',
      security: RefreshTokenSecurity,
      body: RefreshTokenBodySchema,
      response: { 200: EmptySchema, ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const fromCookie = request.body.refresh === undefined
    // The cookies go whatever the outcome: a refresh cookie that was sent is of no use any more.
    if (fromCookie) reply.clearAuthCookies()
    await fastify.sessions.blacklist(await fastify.verifyRefreshToken(request, reply), callerOf(request))
    return {}
  })
}

export default blacklist
