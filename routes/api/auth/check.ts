import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AccessTokenSecurity, problems } from '#src/schemas.ts'
import type { UserWithRoles } from '#src/services/accounts/users.ts'
import { actorsOf, authContextOf, type TokenClaims } from '#src/services/auth/claims.ts'
import { scopesOf } from '#src/services/oauth/clients.ts'

// Every value is percent-encoded the same way, so one decodeURIComponent downstream gives it back
// exactly: `%` and whatever is not visible ASCII (letters beyond it, as UTF-8). An address that
// holds `%61` itself must not decode to another one.
const headerValue = (value: string): string => value.replace(/[^\x21-\x24\x26-\x7e]/gu, encodeURIComponent)

// What the gateway requires of the token, besides being live: RFC 6749 §3.3 scopes, all of
// them (space-separated), its audience, which a service token must name, and for a user's the
// assurance of its sign-in (aal2: a second factor).
export const CheckQuerySchema = Type.Object({
  scope: Type.Optional(Type.String({ minLength: 1, maxLength: 1024 })),
  audience: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
  aal: Type.Optional(Type.Union([Type.Literal('aal1'), Type.Literal('aal2')]))
}, { additionalProperties: false })

/**
 * Forward-auth for gateways: nginx auth_request, Traefik forwardAuth, Caddy forward_auth. On
 * the path of every request through the gateway, so no body and nothing but the identity: a
 * user of an active session, or a service client that is enabled, holding the scopes asked
 * (403 insufficient_scope, RFC 6750 §3.1) for the audience the gateway names.
 */
const check: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, auth } = fastify

  fastify.get('/check', {
    schema: {
      tags: ['auth'],
      summary: 'Forward-auth: 204 with X-Auth-* identity headers for a live access token, a user\'s or a service\'s',
      security: AccessTokenSecurity,
      querystring: CheckQuerySchema,
      response: { 204: Type.Null(), ...problems(400, 401, 403, 503) }
    }
  }, async (request, reply) => {
    const { scope, audience, aal } = request.query
    const identity = await auth.authorize(await fastify.verifyAnyAccessToken(request, reply), { scopes: scopesOf(scope), audience, aal })
    const userHeaders = (user: UserWithRoles, claims: Pick<TokenClaims, 'sid' | 'aal' | 'amr' | 'auth_time' | 'iat'>): Record<string, string> => {
      const context = authContextOf(claims)
      return {
        'x-auth-user-id': String(user.id),
        'x-auth-username': headerValue(user.username),
        'x-auth-email': headerValue(user.email),
        'x-auth-session-id': claims.sid,
        'x-auth-roles': user.roles.join(','),
        'x-auth-email-verified': String(user.email_verified_at !== null),
        'x-auth-aal': context.aal,
        'x-auth-amr': context.amr.join(',')
      }
    }
    if (identity.kind === 'user') {
      const { user, claims } = identity
      return reply.code(204).headers({ ...userHeaders(user, claims), 'x-auth-client-id': headerValue(claims.client_id ?? config.OAUTH_FIRST_PARTY_CLIENT_ID) }).send(null)
    }
    const scopeHeader = { 'x-auth-scope': headerValue(identity.scopes.join(' ')) }
    if (identity.kind === 'service') return reply.code(204).headers({ 'x-auth-client-id': headerValue(identity.client.id), ...scopeHeader }).send(null)
    // A client acting (RFC 8693): the subject's headers, the client acting as X-Auth-Actor (and
    // those that acted before it after it, comma-separated); a user's client is the one acting.
    const { subject, claims } = identity
    return reply.code(204).headers({
      ...(subject.kind === 'user' ? { ...userHeaders(subject.user, { ...claims, sid: claims.sid! }), 'x-auth-client-id': headerValue(claims.client_id) } : { 'x-auth-client-id': headerValue(subject.client.id) }),
      ...scopeHeader,
      'x-auth-actor': actorsOf(claims.act).map(headerValue).join(',')
    }).send(null)
  })
}

export default check
