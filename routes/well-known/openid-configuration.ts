import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { problems } from '#src/schemas.ts'

export const prefixOverride = '/.well-known'

const DiscoverySchema = Type.Object({
  issuer: Type.String(),
  jwks_uri: Type.String(),
  token_endpoint: Type.String(),
  introspection_endpoint: Type.String(),
  introspection_endpoint_auth_methods_supported: Type.Array(Type.String()),
  grant_types_supported: Type.Array(Type.String()),
  response_types_supported: Type.Array(Type.String()),
  subject_types_supported: Type.Array(Type.String()),
  id_token_signing_alg_values_supported: Type.Array(Type.String()),
  token_endpoint_auth_methods_supported: Type.Array(Type.String()),
  claims_supported: Type.Array(Type.String())
})

/**
 * OpenID Connect Discovery 1.0 (and RFC 8414) metadata: what gateway JWT plugins (Kong,
 * Traefik, Envoy jwt_authn, APISIX) read to configure themselves from one URL.
 */
const discovery: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config } = fastify

  fastify.get('/openid-configuration', {
    schema: {
      tags: ['token'],
      summary: 'Discovery metadata: issuer, JWKS URL, endpoints and algorithms',
      response: { 200: DiscoverySchema, ...problems() }
    }
  }, async (request, reply) => {
    // PUBLIC_URL (required in production); else, in development, the host the request came to
    // (as TRUST_PROXY lets Fastify read it), which no cache may keep: a request naming another
    // host would poison it for every client after.
    const base = config.publicUrl ?? `${request.protocol}://${request.host}`
    reply.header('cache-control', config.publicUrl === undefined ? 'no-store' : `public, max-age=${config.jwksMaxAgeS}`)
    return {
      issuer: config.JWT_ISSUER,
      jwks_uri: `${base}/.well-known/jwks.json`,
      token_endpoint: `${base}/api/token`,
      introspection_endpoint: `${base}/api/token/introspect`,
      introspection_endpoint_auth_methods_supported: ['client_secret_basic'],
      grant_types_supported: ['password', 'refresh_token'],
      response_types_supported: ['token'],
      subject_types_supported: ['public'],
      // What other services can verify with the JWKS: nothing under HS256, whose key is never published.
      id_token_signing_alg_values_supported: config.JWT_ALGORITHM === 'HS256' ? [] : [config.JWT_ALGORITHM],
      token_endpoint_auth_methods_supported: ['none'],
      claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'jti', 'sid', 'user_id', 'token_type']
    }
  })
}

export default discovery
