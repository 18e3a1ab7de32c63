import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { authorizationServerMetadata, CLAIMS_SUPPORTED, metadataBase } from '#src/services/oauth/metadata.ts'
import { problems } from '#src/schemas.ts'

export const prefixOverride = '/.well-known'

const Strings = Type.Array(Type.String())
// RFC 8414 §2.
const AuthorizationServerSchema = Type.Object({
  issuer: Type.String(),
  token_endpoint: Type.String(),
  jwks_uri: Type.String(),
  grant_types_supported: Strings,
  response_types_supported: Strings,
  token_endpoint_auth_methods_supported: Strings,
  token_endpoint_auth_signing_alg_values_supported: Strings,
  introspection_endpoint: Type.String(),
  introspection_endpoint_auth_methods_supported: Strings,
  introspection_endpoint_auth_signing_alg_values_supported: Strings,
  revocation_endpoint: Type.String(),
  revocation_endpoint_auth_methods_supported: Strings,
  revocation_endpoint_auth_signing_alg_values_supported: Strings,
  scopes_supported: Strings,
  // RFC 8693's token types (authgate's names: RFC 8693 defines no metadata); without them here,
  // the response schema drops them from the answer.
  token_exchange_subject_token_types_supported: Strings,
  token_exchange_actor_token_types_supported: Strings,
  token_exchange_requested_token_types_supported: Strings
})
// OpenID Connect Discovery 1.0 §3 adds what an OpenID provider must name.
const OpenIdConfigurationSchema = Type.Composite([AuthorizationServerSchema, Type.Object({
  subject_types_supported: Strings,
  id_token_signing_alg_values_supported: Strings,
  claims_supported: Strings
})])

/**
 * The metadata clients and gateways configure themselves from: RFC 8414 (openid-client,
 * oauth4webapi) and OpenID Connect Discovery 1.0 (Kong, Traefik, Envoy jwt_authn, APISIX,
 * mod_auth_openidc), the same endpoints in both.
 */
const discovery: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config } = fastify
  // PUBLIC_URL (required in production); else, in development, the host the request came to
  // (as TRUST_PROXY lets Fastify read it), which no cache may keep: a request naming another
  // host would poison it for every client after.
  const cacheControl = config.publicUrl === undefined ? 'no-store' : `public, max-age=${config.jwksMaxAgeS}`

  fastify.get('/oauth-authorization-server', {
    schema: {
      tags: ['oauth'],
      summary: 'Authorization server metadata (RFC 8414): endpoints, grants, client authentication, scopes',
      response: { 200: AuthorizationServerSchema, ...problems() }
    }
  }, async (request, reply) => {
    reply.header('cache-control', cacheControl)
    return authorizationServerMetadata(config, metadataBase(config, request))
  })

  fastify.get('/openid-configuration', {
    schema: {
      tags: ['oauth'],
      summary: 'OpenID Connect discovery metadata: the same, with the JWKS\'s algorithm and the claims',
      response: { 200: OpenIdConfigurationSchema, ...problems() }
    }
  }, async (request, reply) => {
    reply.header('cache-control', cacheControl)
    return {
      ...authorizationServerMetadata(config, metadataBase(config, request)),
      subject_types_supported: ['public'],
      // What other services can verify with the JWKS: nothing under HS256, whose key is never published.
      id_token_signing_alg_values_supported: config.JWT_ALGORITHM === 'HS256' ? [] : [config.JWT_ALGORITHM],
      claims_supported: CLAIMS_SUPPORTED
    }
  })
}

export default discovery
