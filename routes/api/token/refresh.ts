import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { problems, RefreshTokenBodySchema, RefreshTokenSecurity, TokenPairSchema } from '#src/schemas.ts'
import { perIp } from '#src/http/limits.ts'

const refresh: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/refresh', {
    config: { limits: [perIp('token', fastify.config.RATE_LIMIT_TOKEN_MAX)] },
    schema: {
      tags: ['token'],
      summary: 'Rotate a refresh token (body, else the refresh cookie) into a new pair',
      security: RefreshTokenSecurity,
      body: RefreshTokenBodySchema,
      response: { 200: TokenPairSchema, ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const fromCookie = request.body.refresh === undefined
    try {
      const pair = await fastify.sessions.refresh(await fastify.verifyRefreshToken(request, reply), callerOf(request))
      if (fromCookie) reply.setAuthCookies(pair)
      return pair
    } catch (error) {
      // A refresh cookie that cannot refresh any more is of no use to the browser.
      if (fromCookie && (error as { statusCode?: number }).statusCode === 401) reply.clearAuthCookies()
      throw error
    }
  })
}

export default refresh
