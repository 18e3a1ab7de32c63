import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { TokenNotValidError } from '#src/errors.ts'
import { problems, RefreshTokenBodySchema, RefreshTokenSecurity, TokenPairSchema } from '#src/schemas.ts'

const refresh: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/refresh', {
    config: { limits: { kind: 'token' } },
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
      const claims = await fastify.verifyRefreshToken(request, reply)
      const who = { userId: claims.user_id, sessionId: claims.sid }
      const outcome = await fastify.sessions.refresh(claims).catch((error: unknown) => {
        // A token of ours whose session has ended: worth a line in the trail, unlike forgeries.
        if (error instanceof TokenNotValidError) request.audit({ event: 'refresh', outcome: 'failure', ...who })
        throw error
      })
      if (outcome.kind === 'reused') {
        request.audit({ event: 'reuse_detected', outcome: 'failure', ...who, detail: { action: 'session revoked' } })
        throw new TokenNotValidError()
      }
      request.audit({ event: 'refresh', ...who })
      if (fromCookie) reply.setAuthCookies(outcome.pair)
      return outcome.pair
    } catch (error) {
      // A refresh cookie that cannot refresh any more is of no use to the browser.
      if (fromCookie && (error as { statusCode?: number }).statusCode === 401) reply.clearAuthCookies()
      throw error
    }
  })
}

export default refresh
