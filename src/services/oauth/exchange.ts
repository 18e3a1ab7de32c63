import { randomUUID } from 'node:crypto'
import { DatabaseUnavailableError, InvalidClientError, InvalidRequestError, InvalidScopeError, InvalidTargetError, UnauthorizedClientError } from '../../errors.ts'
import type { Clock } from '../../lib/clock.ts'
import type { UserWithRoles } from '../accounts/users.ts'
import type { AuditTrail, Caller } from '../audit.ts'
import type { Auth, Identity } from '../auth/auth.ts'
import { actorsOf, EXCHANGE_GRANT, MAX_ACTORS, type Actor, type ExchangedClaims } from '../auth/claims.ts'
import type { Keyring } from '../keys/keyring.ts'
import { scopesOf, type Clients, type ServiceClient } from './clients.ts'

/** RFC 8693 §3's token type of an OAuth access token: the only one authgate takes and issues in an exchange. */
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token'

/** The parameters of a token exchange request (RFC 8693 §2.1). */
export interface ExchangeRequest {
  scope?: string
  subject_token?: string
  subject_token_type?: string
  actor_token?: string
  actor_token_type?: string
  requested_token_type?: string
  /** The client a request names without authenticating it: beside an actor_token, it must be the actor_token's. */
  client_id?: string
}

/** RFC 8693 §2.2.1: an access token, and its type. No refresh token: a client exchanges again. */
export interface ExchangedToken { access_token: string, issued_token_type: typeof ACCESS_TOKEN_TYPE, token_type: 'Bearer', expires_in: number, scope: string }

export interface ExchangeDeps {
  clock: Clock
  keyring: Keyring
  auth: Auth
  clients: Clients
  audit: AuditTrail
}

/**
 * Token exchange (RFC 8693): a client acting for the subject of a token it was given gets a token
 * for another service, which only ever narrows: one audience its policy allows (`--exchange-to`),
 * scopes within the subject token's and its own, a lifetime within the subject token's and its
 * own. The subject (`sub`, and a user's `sid` and sign-in) is kept, the client acting is named in
 * `act` (nested when an exchanged token is exchanged again). One verification and one signature:
 * nothing is written but the audit event, which is queued.
 */
export function createExchange ({ clock, keyring, auth, clients, audit }: ExchangeDeps) {
  // A token given in the request, live, or invalid_request saying why (RFC 8693 §2.2.2); a database outage stays a 503.
  async function liveToken (token: string, name: 'subject_token' | 'actor_token'): Promise<Identity> {
    let identity
    try {
      identity = await auth.identify(await auth.verifyAnyAccess(token))
    } catch (error) {
      if (error instanceof DatabaseUnavailableError) throw error
      throw new InvalidRequestError(`${name} is not a valid access token of authgate's, or it has expired.`)
    }
    if (identity === undefined) throw new InvalidRequestError(`${name} is no longer active: its session ended, or its client is disabled or no longer allowed it.`)
    return identity
  }

  // The client an actor_token (RFC 8693 §2.1) names: a service's own token, for authgate itself.
  async function actorOf (token: string): Promise<ServiceClient> {
    const identity = await liveToken(token, 'actor_token')
    if (identity.kind !== 'service') throw new InvalidRequestError('actor_token must be a service\'s own token (client credentials or JWT bearer grant).')
    if (!clients.assertionAudiences.includes(identity.claims.aud)) throw new InvalidRequestError(`actor_token must be a token for authgate itself (aud ${clients.assertionAudiences[0]}), not one for another service.`)
    return identity.client
  }

  // The user whose token is exchanged, if it is a user's, and the claims of theirs it keeps.
  function userClaimsOf (subject: Identity): Pick<ExchangedClaims, 'user_id' | 'sid' | 'roles' | 'aal' | 'amr' | 'auth_time'> | undefined {
    let user: UserWithRoles
    if (subject.kind === 'user') user = subject.user
    else if (subject.kind === 'exchanged' && subject.subject.kind === 'user') user = subject.subject.user
    else return undefined
    const { sid, aal, amr, auth_time: authTime } = subject.claims as ExchangedClaims
    return { user_id: user.id, sid, roles: user.roles, ...(aal === undefined ? {} : { aal }), ...(amr === undefined ? {} : { amr }), ...(authTime === undefined ? {} : { auth_time: authTime }) }
  }

  return {
    /**
     * The token `authenticated` (the client the request proved, or null when an actor_token
     * names it) gets for the subject token toward `audience` (RFC 8693 §2.2.1), or the error
     * RFC 8693 §2.2.2 names: invalid_request for a token or parameter not taken, invalid_target
     * for an audience the policy does not allow, invalid_scope for a scope not held.
     */
    async exchange (authenticated: ServiceClient | null, audience: string | undefined, request: ExchangeRequest, caller: Caller): Promise<ExchangedToken> {
      if (request.subject_token === undefined) throw new InvalidRequestError('subject_token is required: the access token to exchange.')
      if (request.subject_token_type !== ACCESS_TOKEN_TYPE) throw new InvalidRequestError(`subject_token_type must be ${ACCESS_TOKEN_TYPE}: authgate exchanges its own access tokens.`)
      if (request.requested_token_type !== undefined && request.requested_token_type !== ACCESS_TOKEN_TYPE) throw new InvalidRequestError(`requested_token_type must be ${ACCESS_TOKEN_TYPE}, or left out: authgate issues access tokens.`)
      if ((request.actor_token === undefined) !== (request.actor_token_type === undefined)) throw new InvalidRequestError('actor_token and actor_token_type go together (RFC 8693 §2.1).')
      if (request.actor_token_type !== undefined && request.actor_token_type !== ACCESS_TOKEN_TYPE) throw new InvalidRequestError(`actor_token_type must be ${ACCESS_TOKEN_TYPE}.`)

      // The client acting: the one that authenticated, or the one its actor_token names; both, the same.
      let actor = authenticated
      if (request.actor_token !== undefined) {
        const named = await actorOf(request.actor_token)
        if (actor !== null && actor.id !== named.id) throw new InvalidRequestError('actor_token is a token of another client than the one that authenticated.')
        actor = named
      }
      if (actor !== null && request.client_id !== undefined && request.client_id !== actor.id) throw new InvalidRequestError('client_id names another client than the actor_token.')
      if (actor === null) throw new InvalidClientError('no client credentials: authenticate the client (HTTP Basic, client_secret, client_assertion), or give its actor_token.')
      if (actor.exchangeAudiences.length === 0) throw new UnauthorizedClientError('The client may not exchange tokens: it has no --exchange-to audience in the client registry.')
      if (audience === undefined) {
        if (actor.exchangeAudiences.length !== 1) throw new InvalidTargetError(`Name the audience (resource or audience): this client exchanges toward ${actor.exchangeAudiences.join(', ')}.`)
        audience = actor.exchangeAudiences[0]!
      } else if (!actor.exchangeAudiences.includes(audience)) {
        throw new InvalidTargetError(`The client may not exchange tokens toward ${JSON.stringify(audience)}.`)
      }

      // The subject: a token addressed to the client acting (a user's token, which first-party
      // services take, or one of its audiences'), never one meant for another service.
      const subject = await liveToken(request.subject_token, 'subject_token')
      if (subject.kind !== 'user' && !actor.audiences.includes(subject.claims.aud)) {
        throw new InvalidRequestError(`subject_token is for ${JSON.stringify(subject.claims.aud)}, not for this client: a client exchanges the tokens addressed to it.`)
      }
      // A user's own token carries no scope: the policy bounds it alone. Any other: both.
      const held = subject.kind === 'user' ? actor.scopes : subject.scopes.filter((scope) => actor.scopes.includes(scope))
      const asked = request.scope === undefined ? held : scopesOf(request.scope)
      const refused = asked.filter((scope) => !held.includes(scope))
      if (refused.length > 0) throw new InvalidScopeError(`The subject token and the client's policy do not both hold ${refused.map((s) => JSON.stringify(s)).join(', ')}: an exchange only narrows.`)

      // An exchanged token's actor, now one before, names the audience of the token it made.
      const act: Actor = { sub: actor.id, ...(subject.kind === 'exchanged' ? { act: { ...subject.claims.act, aud: subject.claims.aud } } : {}) }
      if (actorsOf(act).length > MAX_ACTORS) throw new InvalidRequestError(`subject_token was exchanged ${MAX_ACTORS - 1} times already: no more.`)
      const iat = Math.floor(clock.now().getTime() / 1000)
      const exp = Math.min(iat + actor.tokenTtlS, subject.claims.exp)
      const user = userClaimsOf(subject)
      const scope = asked.join(' ')
      const jti = randomUUID()
      const accessToken = keyring.signService({
        token_type: 'access', gty: EXCHANGE_GRANT, sub: subject.claims.sub, client_id: actor.id, act, aud: audience, scope, jti, iat, exp, ...user
      })
      audit.record({
        event: 'token_exchanged',
        userId: user?.user_id ?? null,
        sessionId: user?.sid ?? null,
        detail: { subject: subject.claims.sub, subject_kind: user === undefined ? 'service' : 'user', actor: actor.id, act: actorsOf(act), audience, scope, jti, exp }
      }, caller)
      return { access_token: accessToken, issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer', expires_in: exp - iat, scope }
    }
  }
}

export type Exchange = ReturnType<typeof createExchange>
