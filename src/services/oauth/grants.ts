import { InvalidGrantError, InvalidRequestError, InvalidScopeError, InvalidTargetError, UnsupportedGrantTypeError } from '../../errors.ts'
import type { Clock } from '../../lib/clock.ts'
import type { Caller } from '../audit.ts'
import type { Auth, ClientClaim } from '../auth/auth.ts'
import { EXCHANGE_GRANT, secondsLeft } from '../auth/claims.ts'
import type { Sessions } from '../sessions/sessions.ts'
import type { Clients, IssuedToken, ServiceClient } from './clients.ts'
import type { Exchange, ExchangedToken, ExchangeRequest } from './exchange.ts'
import { JWT_BEARER_GRANT, type WorkloadProof, type Workloads } from './workloads.ts'

/** The grants the token endpoint issues for (RFC 6749 §4.4 and §6, RFC 8693, RFC 7523 §2.1). */
export const GRANTS = ['client_credentials', 'refresh_token', EXCHANGE_GRANT, JWT_BEARER_GRANT] as const

/**
 * A token endpoint request (RFC 6749 §4.4.2 and §6, RFC 8707 §2's resource, and `audience` as
 * Auth0 and others name it; RFC 8693 §2.1; RFC 7523 §2.1's assertion).
 */
export interface GrantRequest extends ExchangeRequest {
  grant_type: string
  resource?: string | string[]
  audience?: string
  refresh_token?: string
  assertion?: string
}

/**
 * Who a token endpoint request is for, proven before the per-client rate limit counts it: the
 * client (null for the first-party public client, or an exchange's client its actor_token names),
 * and a workload's token, spent only once the request is admitted.
 */
export interface GrantClient { client: ServiceClient | null, workload?: WorkloadProof }

/** A token endpoint answer (RFC 6749 §5.1, RFC 8693 §2.2.1); a refresh_token only for the refresh grant. */
export type GrantAnswer = IssuedToken | ExchangedToken | { access_token: string, token_type: 'Bearer', expires_in: number, refresh_token: string }

export interface GrantsDeps {
  clock: Clock
  auth: Auth
  sessions: Sessions
  clients: Clients
  exchange: Exchange
  workloads: Workloads
}

// The parameters of each grant that another grant does not take: given to it, they are refused
// (RFC 8693 §2.2.2's invalid_request), never ignored.
const OWN_PARAMETERS: Record<string, Array<keyof GrantRequest>> = {
  refresh_token: ['refresh_token'],
  [EXCHANGE_GRANT]: ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type'],
  [JWT_BEARER_GRANT]: ['assertion']
}

/** The one audience a token request names: `resource` (RFC 8707) or `audience`, never two. */
function audienceOf (request: GrantRequest): string | undefined {
  const resources = request.resource === undefined ? [] : [request.resource].flat()
  const named = [...new Set([...resources, ...(request.audience === undefined ? [] : [request.audience])])]
  if (named.length > 1) throw new InvalidTargetError('A token is for one audience: name one resource (or audience).')
  return named[0]
}

/**
 * The token endpoint's grants (RFC 6749 §3.2): client credentials for services (§4.4), the
 * refresh grant (§6) for the first-party client's users, token exchange (RFC 8693) for a client
 * acting for the subject of a token it was given, and the JWT bearer grant (RFC 7523 §2.1) for a
 * workload that proves itself with another issuer's token.
 */
export function createGrants ({ clock, auth, sessions, clients, exchange, workloads }: GrantsDeps) {
  return {
    /**
     * The client of a token endpoint request, proven before the per-client rate limit counts it:
     * services authenticate; users' refreshes come from the first-party (public) client; a
     * workload client is proven by its assertion; an exchange's client may be named by its
     * actor_token instead (then null here).
     */
    async grantClient (request: GrantRequest, claim: ClientClaim): Promise<GrantClient> {
      const grant = request.grant_type
      if (!(GRANTS as readonly string[]).includes(grant)) throw new UnsupportedGrantTypeError()
      for (const [owner, parameters] of Object.entries(OWN_PARAMETERS)) {
        const foreign = owner === grant ? undefined : parameters.find((name) => request[name] !== undefined)
        if (foreign !== undefined) throw new InvalidRequestError(`${foreign} is not a parameter of grant_type=${grant}.`)
      }
      if (grant === JWT_BEARER_GRANT) {
        if (claim !== undefined && claim.method !== 'none') throw new InvalidRequestError('A workload client has no secret and no key: name it with client_id alone; the assertion proves it.')
        const workload = await workloads.verify(claim?.id, request.assertion)
        return { client: workload.client, workload }
      }
      if (grant === EXCHANGE_GRANT && (claim === undefined || claim.method === 'none') && request.actor_token !== undefined) return { client: null }
      return { client: await auth.authenticateClient(claim, { publicClient: grant === 'refresh_token' }) }
    },

    /** The token endpoint's answer for the client grantClient proved (RFC 6749 §5.1, RFC 8693 §2.2.1). */
    async grant ({ client, workload }: GrantClient, request: GrantRequest, caller: Caller): Promise<GrantAnswer> {
      const grant = request.grant_type
      const asked = { scope: request.scope, audience: audienceOf(request) }
      if (workload !== undefined) {
        // Judged before the workload's token is spent: a request refused for what it asks
        // (a scope, an audience) leaves the token to be presented again.
        clients.issuable(workload.client, asked)
        await workloads.spend(workload, caller)
      }
      if (grant === 'client_credentials' || grant === JWT_BEARER_GRANT) return clients.issue(client!, asked)
      if (grant === EXCHANGE_GRANT) return await exchange.exchange(client, asked.audience, request, caller)
      // Users' tokens are the first-party client's, for JWT_AUDIENCE, and carry no scope.
      if (client !== null) throw new InvalidGrantError()
      if (request.refresh_token === undefined) throw new InvalidRequestError('refresh_token is required for grant_type=refresh_token.')
      if (request.scope !== undefined && request.scope.trim() !== '') throw new InvalidScopeError('Users\' tokens carry no scope.')
      if (asked.audience !== undefined) throw new InvalidTargetError('Users\' tokens are for JWT_AUDIENCE alone.')
      try {
        const pair = await sessions.refresh(await auth.verifyRefresh(request.refresh_token), caller)
        return { access_token: pair.access, token_type: 'Bearer', expires_in: secondsLeft(pair.access, clock.now()), refresh_token: pair.refresh }
      } catch (error) {
        // RFC 6749 §5.2: a refresh token that is not good is invalid_grant, a 400.
        if ((error as { statusCode?: number }).statusCode === 401) throw new InvalidGrantError()
        throw error
      }
    }
  }
}

export type Grants = ReturnType<typeof createGrants>
