import formbody from '@fastify/formbody'
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { clientCredentialsOf, logClientRefusal } from '#src/http/client-credentials.ts'
import { perIp } from '#src/http/limits.ts'
import { ClientParametersSchema, ClientSecurity, oauthProblems } from '#src/schemas.ts'
import type { UserWithRoles } from '#src/services/accounts/users.ts'
import { authContextOf, type TokenClaims } from '#src/services/auth/claims.ts'

const IntrospectBodySchema = Type.Object({
  token: Type.String({ minLength: 1 }),
  token_type_hint: Type.Optional(Type.String()),
  ...ClientParametersSchema.properties
}, { additionalProperties: false })

// RFC 7662 §2.2: inactive says nothing more; active carries the token's claims: a user's with
// the username, a service's with its client and the scopes the client still holds. token_type
// is the OAuth token type (Bearer), not authgate's claim of that name.
const IntrospectionSchema = Type.Object({
  active: Type.Boolean(),
  sub: Type.Optional(Type.String()),
  client_id: Type.Optional(Type.String()),
  scope: Type.Optional(Type.String()),
  user_id: Type.Optional(Type.Integer()),
  username: Type.Optional(Type.String()),
  roles: Type.Optional(Type.Array(Type.String())),
  exp: Type.Optional(Type.Integer()),
  iat: Type.Optional(Type.Integer()),
  iss: Type.Optional(Type.String()),
  aud: Type.Optional(Type.String()),
  jti: Type.Optional(Type.String()),
  token_type: Type.Optional(Type.Literal('Bearer')),
  sid: Type.Optional(Type.String()),
  aal: Type.Optional(Type.String()),
  amr: Type.Optional(Type.Array(Type.String())),
  auth_time: Type.Optional(Type.Integer()),
  // RFC 8693 §4.1: the client acting, and nested, the one that acted before it (an exchanged token).
  act: Type.Optional(Type.Recursive((This) => Type.Object({ sub: Type.String(), aud: Type.Optional(Type.String()), act: Type.Optional(This) })))
})

/**
 * Token introspection (RFC 7662) for services that need revocation-aware answers: a client
 * holding the `introspect` scope (INTROSPECTION_CLIENTS, or a client of the database),
 * authenticated as at the token endpoint; the token in a form body (JSON is taken too). A token
 * is active only for a client it is addressed to (auth.introspect).
 */
const introspect: FastifyPluginAsyncTypebox = async (fastify) => {
  // Forms only here: this route answers services, never a browser's cookies.
  await fastify.register(formbody)
  const { auth } = fastify

  fastify.post('/introspect', {
    config: { acceptsForm: true, oauth: true, limits: [perIp('token', fastify.config.RATE_LIMIT_TOKEN_MAX)] },
    onError: logClientRefusal,
    schema: {
      tags: ['token'],
      summary: 'Token introspection (RFC 7662) for services: revocation-aware',
      security: ClientSecurity,
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: IntrospectBodySchema,
      response: { 200: IntrospectionSchema, ...oauthProblems(400, 401, 403, 413, 415, 429, 503) }
    }
  }, async (request) => {
    const introspector = await auth.authenticateClient(clientCredentialsOf(request, request.body), { publicClient: false })
    const identity = await auth.introspect(introspector, request.body.token)
    if (identity === undefined) return { active: false }
    const { sub, exp, iat, iss, aud, jti } = identity.claims
    const common = { active: true, sub, exp, iat, iss, aud, jti, token_type: 'Bearer' as const }
    if (identity.kind === 'service') return { ...common, client_id: identity.client.id, scope: identity.scopes.join(' ') }
    // A user's, from their own token or one a client got acting for them.
    const userFields = (user: UserWithRoles, claims: Pick<TokenClaims, 'aal' | 'amr' | 'auth_time' | 'iat'> & { sid?: string }) =>
      ({ user_id: user.id, username: user.username, roles: user.roles, sid: claims.sid, ...authContextOf(claims) })
    if (identity.kind === 'user') return { ...common, client_id: identity.claims.client_id, ...userFields(identity.user, identity.claims) }
    // A client acting for a user or a service: the token's client is the one acting.
    const acting = { ...common, client_id: identity.client.id, scope: identity.scopes.join(' '), act: identity.claims.act }
    return identity.subject.kind === 'service' ? acting : { ...acting, ...userFields(identity.subject.user, identity.claims) }
  })
}

export default introspect
