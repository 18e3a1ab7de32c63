import formbody from '@fastify/formbody'
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { safeEqual } from '#src/lib/constant-time.ts'
import { DatabaseUnavailableError, InvalidClientError } from '#src/errors.ts'
import { IntrospectionClientSecurity, oauthProblems } from '#src/schemas.ts'
import { perIp } from '#src/lib/limits.ts'

const IntrospectBodySchema = Type.Object({
  token: Type.String({ minLength: 1 }),
  token_type_hint: Type.Optional(Type.String())
}, { additionalProperties: false })

// RFC 7662 §2.2: inactive says nothing more; active carries the token's claims and the username.
const IntrospectionSchema = Type.Object({
  active: Type.Boolean(),
  sub: Type.Optional(Type.String()),
  user_id: Type.Optional(Type.Integer()),
  username: Type.Optional(Type.String()),
  exp: Type.Optional(Type.Integer()),
  iat: Type.Optional(Type.Integer()),
  iss: Type.Optional(Type.String()),
  aud: Type.Optional(Type.String()),
  jti: Type.Optional(Type.String()),
  token_type: Type.Optional(Type.String()),
  sid: Type.Optional(Type.String())
})

/**
 * Token introspection (RFC 7662) for services that need revocation-aware answers: HTTP Basic
 * credentials of INTROSPECTION_CLIENTS, the token in a form body (JSON is taken too).
 */
const introspect: FastifyPluginAsyncTypebox = async (fastify) => {
  // Forms only here: this route answers services, never a browser's cookies.
  await fastify.register(formbody)
  // Secrets compared in constant time; an unknown id costs the same.
  const clients = fastify.config.introspectionClients
  const nobody = 'authgate: no such client'
  const authenticateClient = async (authorization: string | undefined): Promise<void> => {
    const [scheme, encoded] = (authorization ?? '').split(' ')
    const decoded = scheme?.toLowerCase() === 'basic' && encoded !== undefined ? Buffer.from(encoded, 'base64').toString('utf8') : ''
    const colon = decoded.indexOf(':')
    // RFC 6749 §2.3.1: the id and secret are form-encoded before base64.
    const decode = (part: string): string => { try { return decodeURIComponent(part.replaceAll('+', ' ')) } catch { return '' } }
    const id = colon < 0 ? '' : decode(decoded.slice(0, colon))
    const expected = clients.get(id)
    const matches = safeEqual(colon < 0 ? '' : decode(decoded.slice(colon + 1)), expected ?? nobody)
    if (expected === undefined || !matches) throw new InvalidClientError()
  }

  fastify.post('/introspect', {
    config: { acceptsForm: true, oauth: true, limits: [perIp('token', fastify.config.RATE_LIMIT_TOKEN_MAX)] },
    schema: {
      tags: ['token'],
      summary: 'Token introspection (RFC 7662) for services: revocation-aware',
      security: IntrospectionClientSecurity,
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: IntrospectBodySchema,
      response: { 200: IntrospectionSchema, ...oauthProblems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request) => {
    await authenticateClient(request.headers.authorization)
    let claims
    try {
      claims = await fastify.verifyBodyToken(request)
    } catch (error) {
      // Any token that does not verify (a bad signature, nbf ahead, a crit header, anything) is
      // simply not active; a database outage stays a 503.
      if (error instanceof DatabaseUnavailableError) throw error
      return { active: false }
    }
    // A resource server asks whether a Bearer token may pass: only an access token may. A refresh
    // token is active for authgate alone (RFC 7662 §2.2 lets the server decide what it reports).
    if (claims.token_type !== 'access') return { active: false }
    const user = await fastify.sessions.liveUser(claims)
    if (user === undefined) return { active: false }
    const { sub, user_id: userId, exp, iat, iss, aud, jti, token_type: tokenType, sid } = claims
    return { active: true, sub, user_id: userId, username: user.username, exp, iat, iss, aud, jti, token_type: tokenType, sid }
  })
}

export default introspect
