import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { TokenNotValidError } from '#src/errors.ts'
import { AccessTokenSecurity, problems } from '#src/schemas.ts'

export const LogoutQuerySchema = Type.Object({
  // current: this session; others: every other session of the user; global: all of them.
  scope: Type.Optional(Type.Union([Type.Literal('current'), Type.Literal('others'), Type.Literal('global')]))
}, { additionalProperties: false })

const logout: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/logout', {
    schema: {
      tags: ['auth'],
      summary: 'Sign out: end this session (or the others, or all) and clear the cookies',
      security: AccessTokenSecurity,
      querystring: LogoutQuerySchema,
      body: Type.Object({}, { additionalProperties: false }),
      response: { 204: Type.Null(), ...problems(400, 401, 413, 415, 503) }
    }
  }, async (request, reply) => {
    const scope = request.query.scope ?? 'current'
    // `others` keeps this session, so the browser keeps its cookies.
    if (scope !== 'others') reply.clearAuthCookies()
    // Signing out always works for the browser: an expired token still ends its own session,
    // and one whose session has ended already signs out again without error. Ending other
    // sessions takes a live token of an active session.
    const claims = await fastify.verifyAccessToken(request, reply, { allowExpired: scope === 'current' })
    if (scope !== 'current' && await fastify.sessions.userOf(claims) === undefined) throw new TokenNotValidError()
    const ended = await fastify.sessions.revoke(claims.user_id, claims.sid, scope)
    request.audit({ event: 'logout', userId: claims.user_id, sessionId: claims.sid, detail: { scope, ended } })
    return reply.code(204).send(null)
  })
}

export default logout
