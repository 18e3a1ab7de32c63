import { createRemoteJWKSet, decodeJwt, jwtVerify, type JWTPayload } from 'jose'
import * as oauth from 'oauth4webapi'
import { isDomainError, IdTokenInvalidError, UpstreamDeniedError, UpstreamFailedError, UpstreamNotAllowedError, UpstreamUnavailableError } from '../../errors.ts'
import type { UpstreamProvider } from '../../lib/upstream-providers.ts'

// How authgate speaks to one upstream provider, as a relying party: OpenID Connect discovery,
// the authorization request (state, nonce, PKCE S256), the code exchange and the ID token's
// checks (oauth4webapi, panva's certified RP core), the signature against the provider's JWKS
// (jose's remote key set: cached, refetched for a new kid at most every 30 s); GitHub, which is
// OAuth 2.0 with a REST API and no ID token, through the same authorization request and code
// exchange, then /user and /user/emails.

/** Who the provider says signed in, and how far its word is taken. */
export interface UpstreamProfile {
  provider: string
  /** The identity: (issuer, subject), never an address. */
  issuer: string
  subject: string
  /** The address the provider gave, if any. */
  email: string | undefined
  /** Whether the address is proven: the provider is trusted for addresses and asserted it. */
  emailVerified: boolean
  /** Names to derive a username from, best first. */
  names: string[]
  /** A sign-in the provider says took several factors, from a provider trusted for it. */
  multiFactor: boolean
}

/** What the browser is sent to the provider with, and what the callback needs to finish. */
export interface Authorization { url: string, state: string, nonce: string | undefined, codeVerifier: string }

const TIMEOUT_MS = 10_000
// A discovery document is read again after a day; a failed read is not retried for 30 s.
const DISCOVERY_TTL_MS = 86_400_000
const DISCOVERY_RETRY_MS = 30_000
// The Authentication Method Reference and the OpenID PAPE policy of a multi-factor sign-in.
const PAPE_MULTI_FACTOR = 'http://schemas.openid.net/pape/policies/2007/06/multi-factor'
// Microsoft's multi-tenant endpoints publish this issuer, to be filled from the token's tid.
const TENANT_TEMPLATE = '{tenantid}'
const TENANT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

const domainOf = (email: string): string => email.slice(email.lastIndexOf('@') + 1).toLowerCase()
const text = (value: unknown): string | undefined => typeof value === 'string' && value !== '' ? value : undefined

export interface ProviderClient {
  provider: UpstreamProvider
  /** Where to send the browser: the provider's authorization endpoint with a new state, nonce and PKCE S256 verifier. */
  authorize: (redirectUri: string) => Promise<Authorization>
  /** The callback's parameters checked against the flow, the code exchanged, the identity read. */
  finish: (callback: URLSearchParams, flow: { state: string, nonce: string | undefined, codeVerifier: string, redirectUri: string }) => Promise<UpstreamProfile>
  /** An ID token a native app got from the provider's SDK, checked as the callback's is (its audience one of the client id and EXTRA_AUDIENCES). */
  verifyIdToken: (idToken: string, nonce: string | undefined) => Promise<UpstreamProfile>
}

/** The relying party of one configured provider. */
export function createProviderClient (provider: UpstreamProvider): ProviderClient {
  const insecure = new URL(provider.issuer).protocol === 'http:'
  const http = { [oauth.allowInsecureRequests]: insecure }
  const client: oauth.Client = { client_id: provider.clientId }
  const clientAuth = oauth.ClientSecretPost(provider.clientSecret)
  const github = provider.preset === 'github'

  // GitHub's endpoints are fixed paths of its base URL; an OpenID provider's come from discovery.
  let discovered: { at: number, as?: Promise<oauth.AuthorizationServer> } = { at: 0 }
  const server = async (): Promise<oauth.AuthorizationServer> => {
    if (github) {
      return { issuer: provider.issuer, authorization_endpoint: `${provider.issuer}/login/oauth/authorize`, token_endpoint: `${provider.issuer}/login/oauth/access_token` }
    }
    const age = Date.now() - discovered.at
    if (discovered.as === undefined || age > DISCOVERY_TTL_MS) {
      const as = discover()
      discovered = { at: Date.now(), as }
      // A failed read is kept a short while: a provider that is down is not asked on every request.
      as.catch(() => { if (discovered.as === as) discovered = { at: Date.now() - DISCOVERY_TTL_MS + DISCOVERY_RETRY_MS, as } })
    }
    return await discovered.as!
  }
  async function discover (): Promise<oauth.AuthorizationServer> {
    const issuer = new URL(provider.issuer)
    let response
    try {
      response = await oauth.discoveryRequest(issuer, { ...http, signal: AbortSignal.timeout(TIMEOUT_MS) })
    } catch (error) {
      throw new UpstreamUnavailableError(`the discovery document of ${provider.name} could not be read`)
    }
    try {
      if (provider.preset !== 'microsoft') return await oauth.processDiscoveryResponse(issuer, response)
      // Microsoft's common, organizations and consumers endpoints name the template issuer;
      // a tenant's own endpoint names itself. Either is checked against what was asked for.
      const as = await response.json() as oauth.AuthorizationServer
      const template = `${issuer.origin}/${TENANT_TEMPLATE}/v2.0`
      if (as.issuer !== provider.issuer && !(as.issuer === template && /^\/[^/]+\/v2\.0$/.test(issuer.pathname))) {
        throw new Error(`the discovery document names the issuer ${String(as.issuer)}`)
      }
      for (const field of ['authorization_endpoint', 'token_endpoint', 'jwks_uri'] as const) {
        if (typeof as[field] !== 'string') throw new Error(`the discovery document has no ${field}`)
      }
      return as
    } catch (error) {
      throw new UpstreamUnavailableError(`the discovery document of ${provider.name} is not usable`)
    }
  }

  let keys: ReturnType<typeof createRemoteJWKSet> | undefined
  const jwks = (as: oauth.AuthorizationServer): ReturnType<typeof createRemoteJWKSet> => {
    keys ??= createRemoteJWKSet(new URL(as.jwks_uri!), { timeoutDuration: TIMEOUT_MS, cooldownDuration: 30_000, cacheMaxAge: 600_000 })
    return keys
  }

  // The issuer a token must name: the provider's, or, behind Microsoft's template, its
  // tenant's (the token's tid, which must be a tenant id and an allowed one).
  function expectedIssuer (as: oauth.AuthorizationServer, claims: JWTPayload): string {
    if (!as.issuer.includes(TENANT_TEMPLATE)) return as.issuer
    const tid = claims.tid
    if (typeof tid !== 'string' || !TENANT.test(tid)) throw new IdTokenInvalidError('it names no tenant (tid)')
    return as.issuer.replace(TENANT_TEMPLATE, tid)
  }

  // Behind Microsoft's template: the iss response parameter when it is the template filled with
  // a tenant id (that tenant's issuer, which the ID token must name too), else undefined.
  function tenantIssuerOf (as: oauth.AuthorizationServer, iss: string | null): string | undefined {
    const [prefix, suffix] = as.issuer.split(TENANT_TEMPLATE) as [string, string]
    const tenant = iss?.startsWith(prefix) === true && iss.endsWith(suffix) ? iss.slice(prefix.length, iss.length - suffix.length) : ''
    return TENANT.test(tenant) ? iss! : undefined
  }

  // The issuer an authorization response is checked against (RFC 9207): the provider's; behind
  // the template, the tenant's its iss names, or, with none, no iss required (any other is refused).
  function forResponse (as: oauth.AuthorizationServer, iss: string | null): oauth.AuthorizationServer {
    if (!as.issuer.includes(TENANT_TEMPLATE)) return as
    const tenantIssuer = tenantIssuerOf(as, iss)
    return tenantIssuer !== undefined ? { ...as, issuer: tenantIssuer } : { ...as, authorization_response_iss_parameter_supported: false }
  }

  // The issuer a token answer's ID token is checked against: the provider's; behind the
  // template, its tid's tenant (read from the answer before oauth4webapi checks it), which must
  // be the tenant the authorization response named (RFC 9207), if it named one.
  async function forToken (as: oauth.AuthorizationServer, response: Response, iss: string | null): Promise<oauth.AuthorizationServer> {
    if (!as.issuer.includes(TENANT_TEMPLATE)) return as
    const body = await response.clone().json().catch(() => ({})) as { id_token?: unknown }
    if (typeof body.id_token !== 'string') return as
    const issuer = expectedIssuer(as, decodeJwt(body.id_token))
    const named = tenantIssuerOf(as, iss)
    if (named !== undefined && named !== issuer) throw new IdTokenInvalidError('its tenant is not the one the provider\'s answer named')
    return { ...as, issuer }
  }

  // Who signed in, from the ID token's verified claims, as far as this provider is believed.
  function profileOf (issuer: string, claims: JWTPayload): UpstreamProfile {
    const sub = text(claims.sub)
    if (sub === undefined) throw new IdTokenInvalidError('it has no subject')
    if (provider.preset === 'microsoft' && provider.tenants.length > 0 && !provider.tenants.includes(String(claims.tid))) {
      throw new UpstreamNotAllowedError('the tenant is not one this service accepts')
    }
    const email = text(claims.email)?.toLowerCase()
    // Entra lets a tenant put any address in `email`; only xms_edov says its domain is the tenant's own.
    const asserted = provider.preset === 'microsoft' ? claims.xms_edov === true : claims.email_verified === true
    const emailVerified = email !== undefined && provider.trustEmail && asserted
    if (provider.allowedDomains.length > 0) {
      // Google's hd names the Workspace domain of the account; any other provider's verified address must be of a listed domain.
      const hd = provider.preset === 'google' ? text(claims.hd)?.toLowerCase() : undefined
      const allowed = provider.preset === 'google'
        ? hd !== undefined && provider.allowedDomains.includes(hd)
        : emailVerified && provider.allowedDomains.includes(domainOf(email))
      if (!allowed) throw new UpstreamNotAllowedError('the account is not of a domain this service accepts')
    }
    const amr = Array.isArray(claims.amr) ? claims.amr : []
    return {
      provider: provider.name,
      issuer,
      subject: sub,
      email,
      emailVerified,
      names: [text(claims.preferred_username), text(claims.nickname), email, text(claims.name)].filter((name): name is string => name !== undefined),
      multiFactor: provider.trustAssurance && (amr.includes('mfa') || claims.acr === PAPE_MULTI_FACTOR)
    }
  }

  async function verify (as: oauth.AuthorizationServer, idToken: string, audiences: string[], nonce: string | undefined): Promise<UpstreamProfile> {
    let claims
    try {
      claims = decodeJwt(idToken)
    } catch (error) {
      throw new IdTokenInvalidError('it is not a JWT')
    }
    const issuer = expectedIssuer(as, claims)
    let payload
    try {
      ({ payload } = await jwtVerify(idToken, jwks(as), {
        issuer,
        audience: audiences,
        algorithms: (as.id_token_signing_alg_values_supported ?? ['RS256']).filter((alg) => alg !== 'none' && !alg.startsWith('HS')),
        requiredClaims: ['sub', 'iat', 'exp'],
        clockTolerance: 60
      }))
    } catch (error) {
      throw new IdTokenInvalidError((error as Error).message)
    }
    // OpenID Connect Core §3.1.3.7: several audiences need an azp, and an azp must be one of ours.
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud]
    if ((aud.length > 1 && payload.azp === undefined) || (payload.azp !== undefined && !audiences.includes(String(payload.azp)))) {
      throw new IdTokenInvalidError('its authorized party (azp) is not this service')
    }
    if (nonce !== undefined && payload.nonce !== nonce) throw new IdTokenInvalidError('its nonce is not this sign-in\'s')
    return profileOf(issuer, payload)
  }

  // GitHub: the numeric id is the identity; the address is the primary one GitHub verified,
  // never the profile's `email` (anyone may type one there).
  async function githubProfile (accessToken: string): Promise<UpstreamProfile> {
    const get = async (path: string): Promise<Response> => await fetch(`${provider.apiUrl}${path}`, {
      headers: { authorization: `Bearer ${accessToken}`, accept: 'application/vnd.github+json', 'x-github-api-version': '2022-11-28', 'user-agent': 'authgate' },
      redirect: 'manual',
      signal: AbortSignal.timeout(TIMEOUT_MS)
    })
    const json = async (path: string): Promise<unknown> => {
      const response = await get(path)
      if (!response.ok) throw new UpstreamFailedError(`GitHub answered ${response.status} to ${path}`)
      return await response.json()
    }
    const user = await json('/user') as { id?: unknown, login?: unknown, name?: unknown }
    if (typeof user.id !== 'number' || !Number.isSafeInteger(user.id)) throw new UpstreamFailedError('GitHub\'s /user has no numeric id')
    const emails = await json('/user/emails')
    const primary = Array.isArray(emails)
      ? (emails as Array<{ email?: unknown, primary?: unknown, verified?: unknown }>).find((e) => e.primary === true && e.verified === true && typeof e.email === 'string')
      : undefined
    const email = primary === undefined ? undefined : String(primary.email).toLowerCase()
    if (provider.orgs.length > 0) {
      const login = encodeURIComponent(String(user.login))
      let member = false
      for (const org of provider.orgs) {
        // 204: a member; 404 or 302: not, or not one GitHub tells this token about.
        const response = await get(`/orgs/${encodeURIComponent(org)}/members/${login}`)
        if (response.status === 204) { member = true; break }
      }
      if (!member) throw new UpstreamNotAllowedError('the GitHub account is not a member of an organisation this service accepts')
    }
    if (provider.allowedDomains.length > 0 && (email === undefined || !provider.allowedDomains.includes(domainOf(email)))) {
      throw new UpstreamNotAllowedError('the account is not of a domain this service accepts')
    }
    return {
      provider: provider.name,
      issuer: provider.issuer,
      subject: String(user.id),
      email,
      emailVerified: email !== undefined && provider.trustEmail,
      names: [text(user.login), email, text(user.name)].filter((name): name is string => name !== undefined),
      multiFactor: false
    }
  }

  return {
    provider,

    async authorize (redirectUri) {
      const as = await server()
      const state = oauth.generateRandomState()
      const nonce = github ? undefined : oauth.generateRandomNonce()
      const codeVerifier = oauth.generateRandomCodeVerifier()
      const url = new URL(as.authorization_endpoint!)
      url.searchParams.set('response_type', 'code')
      url.searchParams.set('client_id', provider.clientId)
      url.searchParams.set('redirect_uri', redirectUri)
      url.searchParams.set('scope', provider.scopes.join(' '))
      url.searchParams.set('state', state)
      if (nonce !== undefined) url.searchParams.set('nonce', nonce)
      url.searchParams.set('code_challenge', await oauth.calculatePKCECodeChallenge(codeVerifier))
      url.searchParams.set('code_challenge_method', 'S256')
      // Google shows only accounts of the Workspace domain asked for (the token's hd is still checked).
      if (provider.preset === 'google' && provider.allowedDomains.length === 1) url.searchParams.set('hd', provider.allowedDomains[0]!)
      return { url: url.href, state, nonce, codeVerifier }
    },

    async finish (callback, flow) {
      const as = await server()
      let params
      try {
        // The state, and the iss parameter where the provider sends or promises it (RFC 9207).
        params = oauth.validateAuthResponse(forResponse(as, callback.get('iss')), client, callback, flow.state)
      } catch (error) {
        if (error instanceof oauth.AuthorizationResponseError) {
          throw error.error === 'access_denied' ? new UpstreamDeniedError(error.error) : new UpstreamFailedError(`the provider answered ${error.error}`)
        }
        throw new UpstreamFailedError(`the provider's answer is not valid: ${(error as Error).message}`)
      }
      let response
      try {
        response = await oauth.authorizationCodeGrantRequest(as, client, clientAuth, params, flow.redirectUri, flow.codeVerifier, {
          ...http,
          signal: AbortSignal.timeout(TIMEOUT_MS),
          headers: github ? new Headers({ accept: 'application/json' }) : undefined
        })
      } catch (error) {
        throw new UpstreamUnavailableError(`the token endpoint of ${provider.name} could not be reached`)
      }
      let tokens: oauth.TokenEndpointResponse
      try {
        if (github) {
          tokens = await oauth.processAuthorizationCodeResponse(as, client, response)
        } else {
          // The claims are checked here (iss, aud, azp, exp, nonce) and again with the signature below.
          tokens = await oauth.processAuthorizationCodeResponse(await forToken(as, response, callback.get('iss')), client, response, { expectedNonce: flow.nonce, requireIdToken: true })
        }
      } catch (error) {
        if (isDomainError(error)) throw error
        throw new UpstreamFailedError(`the token answer of ${provider.name} is not valid: ${(error as Error).message}`)
      }
      if (github) return await githubProfile(tokens.access_token)
      return await verify(as, tokens.id_token!, [provider.clientId], flow.nonce)
    },

    async verifyIdToken (idToken, nonce) {
      if (github) throw new IdTokenInvalidError('GitHub issues no ID tokens: use the browser flow')
      return await verify(await server(), idToken, [provider.clientId, ...provider.extraAudiences], nonce)
    }
  }
}
