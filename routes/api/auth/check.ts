import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AccessTokenSecurity, problems } from '#src/schemas.ts'

// Every value is percent-encoded the same way, so one decodeURIComponent downstream gives it back
// exactly: `%` and whatever is not visible ASCII (letters beyond it, as UTF-8). An address that
// holds `%61` itself must not decode to another one.
const headerValue = (value: string): string => value.replace(/[^\x21-\x24\x26-\x7e]/gu, encodeURIComponent)

/**
 * Forward-auth for gateways: nginx auth_request, Traefik forwardAuth, Caddy forward_auth. On
 * the path of every request through the gateway, so no body and nothing but the identity.
 */
const check: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/check', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['auth'],
      summary: 'Forward-auth: 204 with X-Auth-* identity headers for a valid access token of an active session',
      security: AccessTokenSecurity,
      response: { 204: Type.Null(), ...problems(400, 401, 503) }
    }
  }, async (request, reply) => {
    const { user } = request
    return reply.code(204).headers({
      'x-auth-user-id': String(user.id),
      'x-auth-username': headerValue(user.username),
      'x-auth-email': headerValue(user.email),
      'x-auth-session-id': user.sessionId
    }).send(null)
  })
}

export default check
