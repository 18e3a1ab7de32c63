import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { AccessTokenSecurity, EmptySchema, problems } from '#src/schemas.ts'

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
      body: EmptySchema,
      response: { 204: Type.Null(), ...problems(400, 401, 413, 415, 503) }
    }
  }, async (request, reply) => {
    const scope = request.query.scope ?? 'current'
    // `others` keeps this session, so the browser keeps its cookies.
    if (scope !== 'others') reply.clearAuthCookies()
    // Signing out always works for the browser: an expired token still ends its own session,
    // and one whose session has ended already signs out again without error.
    const claims = await fastify.verifyAccessToken(request, reply, { allowExpired: scope === 'current' })
    await fastify.sessions.signOut(claims, scope, callerOf(request))
    return reply.code(204).send(null)
  })
}

export default logout
