import type { Config } from '../../config.ts'
import { ExchangedClaimsSchema, ServiceClaimsSchema, TokenClaimsSchema } from '../auth/claims.ts'
import { ACCESS_TOKEN_TYPE } from './exchange.ts'
import { GRANTS } from './grants.ts'
import { ADMIN_SCOPES, ASSERTION_ALGORITHMS, INTROSPECT_ALL_SCOPE, INTROSPECT_SCOPE, INTROSPECT_USERS_SCOPE } from './clients.ts'

// How clients authenticate at each endpoint: `none` is the first-party public client, whose
// users refresh and revoke their own tokens.
const CLIENT_AUTH = ['client_secret_basic', 'client_secret_post', 'private_key_jwt']

/**
 * RFC 8414 authorization server metadata: exactly what works. The endpoints are under `base`
 * (PUBLIC_URL, else the request's own host in development); no authorization endpoint, so no
 * response type and no PKCE method.
 */
export function authorizationServerMetadata (config: Pick<Config, 'JWT_ISSUER'>, base: string) {
  return {
    issuer: config.JWT_ISSUER,
    token_endpoint: `${base}/oauth/token`,
    jwks_uri: `${base}/.well-known/jwks.json`,
    grant_types_supported: [...GRANTS],
    response_types_supported: [] as string[],
    token_endpoint_auth_methods_supported: [...CLIENT_AUTH, 'none'],
    token_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGORITHMS,
    introspection_endpoint: `${base}/api/token/introspect`,
    introspection_endpoint_auth_methods_supported: CLIENT_AUTH,
    introspection_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGORITHMS,
    revocation_endpoint: `${base}/oauth/revoke`,
    revocation_endpoint_auth_methods_supported: [...CLIENT_AUTH, 'none'],
    revocation_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGORITHMS,
    // authgate's own scopes; a client holds whatever others the services it calls define.
    scopes_supported: [INTROSPECT_SCOPE, INTROSPECT_USERS_SCOPE, INTROSPECT_ALL_SCOPE, ...Object.values(ADMIN_SCOPES)],
    // RFC 8693 defines no metadata of its own: these are authgate's names for what its token
    // exchange takes (subject_token_type, actor_token_type) and issues (requested_token_type).
    token_exchange_subject_token_types_supported: [ACCESS_TOKEN_TYPE],
    token_exchange_actor_token_types_supported: [ACCESS_TOKEN_TYPE],
    token_exchange_requested_token_types_supported: [ACCESS_TOKEN_TYPE]
  }
}

/** Where the metadata's URLs point: PUBLIC_URL, else (development only) the host the request came to. */
export function metadataBase (config: Pick<Config, 'publicUrl'>, request: { protocol: string, host: string }): string {
  return config.publicUrl ?? `${request.protocol}://${request.host}`
}

/**
 * OpenID Connect Discovery's `claims_supported`: every claim a verifier may meet in an access
 * token, a user's or a service's, read from the schemas the tokens are checked against, so a
 * claim added there (aal, amr, auth_time, roles) is named here too. `sxp` is in refresh tokens
 * only, which no other service verifies.
 */
export const CLAIMS_SUPPORTED = [...new Set([TokenClaimsSchema, ServiceClaimsSchema, ExchangedClaimsSchema].flatMap((schema) => Object.keys(schema.properties)))]
  .filter((claim) => claim !== 'sxp')
