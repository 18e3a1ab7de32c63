import { createHash } from 'node:crypto'
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload } from 'jose'
import * as oauth from 'oauth4webapi'
import { AssertionInvalidError, InvalidClientError, InvalidRequestError, UpstreamUnavailableError } from '../../errors.ts'
import type { Clock } from '../../lib/clock.ts'
import type { AuditTrail, Caller } from '../audit.ts'
import { ASSERTION_MAX_LIFETIME_S, ASSERTION_SKEW_MS, CLIENT_REFUSALS, isIssuerUrl, isNumericDate, type Clients, type ServiceClient, type TrustedIssuer } from './clients.ts'

/** RFC 7523 §2.1's grant: a token of an issuer the client trusts, for a token of authgate's. */
export const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer'

/** A workload client proven by a token of its issuer, the token not yet spent (Workloads.spend). */
export interface WorkloadProof { client: ServiceClient, issuer: string, subject: string, jti: string, exp: number }

export interface WorkloadsDeps {
  clients: Clients
  clock: Clock
  audit: AuditTrail
}

const TIMEOUT_MS = 10_000
// A discovery document is read again after a day; a failed read is not retried for 30 s. A key
// set is kept ten minutes, and read again at most every 30 s for a key it does not hold.
const DISCOVERY_TTL_MS = 86_400_000
const DISCOVERY_RETRY_MS = 30_000

// What is said to anybody who names a client: the same whether the id is unknown, the client
// trusts no issuer, or the token is not of the issuer and subject it trusts, or not signed as it
// must be; so that naming an id tells nothing of its configuration.
const UNTRUSTED = 'it is not a token of the issuer and subject the client trusts, signed with the algorithm it pins by a key of that issuer'

/**
 * Workload identities (RFC 7523 §2.1, issue 30): a workload client has no secret; it proves who it
 * is with a token another issuer gave it (a Kubernetes projected service-account token, a CI's
 * OIDC token, another authgate's), for authgate (`aud`: its issuer or token endpoint), of a
 * subject the client lists, signed with the one algorithm pinned by a key of the issuer's JWKS
 * (jose's remote key set, cached; the issuer's discovery document names it unless the client
 * does). The token is taken once: its jti, or its hash when it has none, is spent across replicas.
 */
export function createWorkloads ({ clients, clock, audit }: WorkloadsDeps) {
  const discovered = new Map<string, { at: number, jwksUri: Promise<string> }>()
  const keySets = new Map<string, ReturnType<typeof createRemoteJWKSet>>()

  // The issuer's jwks_uri, from its discovery document (OpenID Connect Discovery, RFC 8414 as
  // oauth4webapi checks it: the issuer it names is the one asked for).
  function jwksUriOf (issuer: string): Promise<string> {
    const known = discovered.get(issuer)
    if (known !== undefined && Date.now() - known.at < DISCOVERY_TTL_MS) return known.jwksUri
    const jwksUri = (async () => {
      const url = new URL(issuer)
      const options = { [oauth.allowInsecureRequests]: url.protocol === 'http:', signal: AbortSignal.timeout(TIMEOUT_MS) }
      let as
      try {
        as = await oauth.processDiscoveryResponse(url, await oauth.discoveryRequest(url, options))
      } catch {
        throw new UpstreamUnavailableError(`the discovery document of ${issuer} could not be read`)
      }
      // Its keys are read as the issuer is: https, or http on this machine's loopback.
      if (typeof as.jwks_uri !== 'string' || !isIssuerUrl(as.jwks_uri)) throw new UpstreamUnavailableError(`the discovery document of ${issuer} names no jwks_uri that is https (or http on 127.0.0.1 or localhost) without query or fragment`)
      return as.jwks_uri
    })()
    const entry = { at: Date.now(), jwksUri }
    discovered.set(issuer, entry)
    // A failed read is kept a short while: an issuer that is down is not asked on every request.
    jwksUri.catch(() => { entry.at = Date.now() - DISCOVERY_TTL_MS + DISCOVERY_RETRY_MS })
    return jwksUri
  }

  async function keysOf (trust: TrustedIssuer): Promise<ReturnType<typeof createRemoteJWKSet>> {
    const uri = trust.jwksUri ?? await jwksUriOf(trust.issuer)
    let keys = keySets.get(uri)
    if (keys === undefined) {
      keys = createRemoteJWKSet(new URL(uri), { timeoutDuration: TIMEOUT_MS, cooldownDuration: 30_000, cacheMaxAge: 600_000 })
      keySets.set(uri, keys)
    }
    return keys
  }

  const refuse = (why: string): Error => new AssertionInvalidError(why)

  // What RFC 7523 §3 asks of the assertion itself, judged before its client is looked up.
  function assertionProblem (payload: JWTPayload, audiences: string[], now: number): string | undefined {
    const { aud, exp, nbf, iat } = payload
    if (!(Array.isArray(aud) ? aud : [aud]).some((one) => audiences.includes(one as string))) return `its aud must be authgate's token endpoint (${audiences[1]}) or issuer (${audiences[0]})`
    if (!isNumericDate(exp)) return 'it has no exp (a NumericDate: seconds since 1970, up to the year 9999)'
    if (exp * 1000 + ASSERTION_SKEW_MS <= now) return `it expired at ${new Date(exp * 1000).toISOString()}`
    if (exp * 1000 - now > ASSERTION_MAX_LIFETIME_S * 1000 + ASSERTION_SKEW_MS) return `it expires more than ${ASSERTION_MAX_LIFETIME_S} s ahead (exp ${new Date(exp * 1000).toISOString()}): ask the issuer for a token of at most an hour`
    if (nbf !== undefined && (typeof nbf !== 'number' || nbf * 1000 - ASSERTION_SKEW_MS > now)) return 'it is not valid yet (nbf)'
    if (iat !== undefined && (typeof iat !== 'number' || iat * 1000 - ASSERTION_SKEW_MS > now)) return 'it was issued in the future (iat)'
    return undefined
  }

  return {
    /**
     * The workload client `clientId` names, proven by `assertion` (RFC 7523 §2.1 and §3), the
     * token not yet spent: a request refused after this (a rate limit, a scope, an audience)
     * leaves it to be presented again. invalid_grant saying why not; an issuer that cannot be
     * reached is a 503.
     */
    async verify (clientId: string | undefined, assertion: string | undefined): Promise<WorkloadProof> {
      if (assertion === undefined) throw new InvalidRequestError(`assertion is required for grant_type=${JWT_BEARER_GRANT}: a token of the issuer the client trusts.`)
      if (clientId === undefined) throw new InvalidRequestError(`client_id is required for grant_type=${JWT_BEARER_GRANT}: the workload client the assertion is for.`)
      let alg: string | undefined, payload: JWTPayload
      try {
        alg = decodeProtectedHeader(assertion).alg
        payload = decodeJwt(assertion)
      } catch {
        throw refuse('it is not a JWT')
      }
      const now = clock.now().getTime()
      const problem = assertionProblem(payload, clients.assertionAudiences, now)
      if (problem !== undefined) throw refuse(problem)
      const client = await clients.find(clientId)
      const trust = client?.trust
      if (client === undefined || trust == null || alg !== trust.alg || payload.iss !== trust.issuer || !trust.subjects.includes(payload.sub as string)) throw refuse(UNTRUSTED)
      try {
        await jwtVerify(assertion, await keysOf(trust), {
          issuer: trust.issuer,
          audience: clients.assertionAudiences,
          algorithms: [trust.alg],
          currentDate: clock.now(),
          clockTolerance: ASSERTION_SKEW_MS / 1000,
          requiredClaims: ['exp', 'sub']
        })
      } catch (error) {
        if (error instanceof UpstreamUnavailableError) throw error
        // The issuer's key set could not be read: nothing the workload can mend.
        if (error instanceof errors.JWKSTimeout || error instanceof errors.JWKSInvalid || !(error instanceof errors.JOSEError) || error.code === 'ERR_JOSE_GENERIC') {
          throw new UpstreamUnavailableError(`the keys of ${trust.issuer} could not be read`)
        }
        throw refuse(UNTRUSTED)
      }
      if (client.disabled) throw new InvalidClientError(CLIENT_REFUSALS.disabled)
      // Kubernetes' and the CIs' tokens carry a jti; one without is spent by the hash of what its
      // signature signs: the signature's own text can be written several ways (the spare bits
      // of its last base64url character; ECDSA's (r, n - s)), each of which verifies.
      const signed = assertion.slice(0, assertion.lastIndexOf('.'))
      const jti = typeof payload.jti === 'string' && payload.jti !== '' && payload.jti.length <= 256 ? payload.jti : `sha256:${createHash('sha256').update(signed).digest('base64url')}`
      return { client, issuer: trust.issuer, subject: payload.sub as string, jti, exp: payload.exp! }
    },

    /** Spends a proven token once across replicas (invalid_grant when it was spent already), and audits the issue it allows. */
    async spend ({ client, issuer, subject, jti, exp }: WorkloadProof, caller: Caller): Promise<void> {
      if (!await clients.spend(client.id, jti, exp)) throw refuse('it was used already: each token of the issuer is taken once (RFC 7523 §3); get a new one')
      audit.record({ event: 'workload_token_issued', detail: { client_id: client.id, issuer, subject, jti } }, caller)
    }
  }
}

export type Workloads = ReturnType<typeof createWorkloads>
