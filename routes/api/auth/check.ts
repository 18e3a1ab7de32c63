import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AccessTokenSecurity, problems } from '#src/schemas.ts'

// Header values are bytes: a name with letters beyond ASCII is sent percent-encoded (UTF-8).
const headerValue = (value: string): string => /^[\x20-\x7e]*$/.test(value) ? value : encodeURIComponent(value)

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
