import { createDecoder, createVerifier, TokenError } from 'fast-jwt'
import type { Config } from '../../config.ts'
import {
  Aal2RequiredError, AudienceRequiredError, DatabaseUnavailableError, InsufficientScopeError, InvalidClientError, TokenExpiredError, TokenNotValidError,
  UnauthorizedClientError, UnsupportedTokenTypeError, WrongAudienceError
} from '../../errors.ts'
import type { Clock } from '../../lib/clock.ts'
import { TtlCache } from '../../lib/ttl-cache.ts'
import type { UserWithRoles } from '../accounts/users.ts'
import type { Caller } from '../audit.ts'
import type { JoseHeader, Keyring } from '../keys/keyring.ts'
import { INTROSPECT_SCOPE, scopesOf, type ClientCredentials, type Clients, type ServiceClient } from '../oauth/clients.ts'
import type { SessionUser } from '../sessions/cache.ts'
import type { Sessions } from '../sessions/sessions.ts'
import {
  authContextOf, chainOf, parseAnyClaims, parseClaims, type ExchangedClaims, type ServiceClaims, type TokenClaims, type TokenType, type VerifiedClaims
} from './claims.ts'

/** Who a live token speaks for: a user of an active session, an enabled service client with the scopes it still holds, or a client acting for either. */
export type Identity =
  | { kind: 'user', claims: TokenClaims, user: UserWithRoles }
  | { kind: 'service', claims: ServiceClaims, client: ServiceClient, scopes: string[] }
  | Exchanged

/**
 * An exchanged token's identity (RFC 8693): its subject, a user of an active session or an
 * enabled client; the client acting (`client`), which still may exchange toward the token's
 * audience, with the scopes of the token it still holds.
 */
export interface Exchanged {
  kind: 'exchanged'
  claims: ExchangedClaims
  subject: { kind: 'user', user: UserWithRoles } | { kind: 'service', client: ServiceClient }
  client: ServiceClient
  scopes: string[]
}

/**
 * What a request is judged on: a verified token, or a client that proved itself with its
 * credentials (RFC 6749 §2.3) and holds the scopes it was given.
 */
export type Subject = VerifiedClaims | { kind: 'client', client: ServiceClient }

/**
 * What a request needs of its subject, all of it: RFC 6749 §3.3 scopes (users hold none), the
 * audience its token is for (a service's token must name one; for a client, the audience of the
 * tokens it may learn of), a user's sign-in assurance (a service has no person behind it).
 */
export interface Requirement {
  scopes?: string[]
  audience?: string
  aal?: 'aal1' | 'aal2'
  /** How a subject that is not for `audience` is answered (the admin API: a path that does not exist); WrongAudienceError by default. */
  elsewhere?: () => Error
}

/** What a request says of its client: credentials, a public client's bare id, or nothing. */
export type ClientClaim = ClientCredentials | { method: 'none', id: string } | undefined

/** Why a request that had to authenticate a client did not: no credentials, or a bare client_id. */
export const NO_CLIENT_CREDENTIALS = 'no client credentials: HTTP Basic, client_id and client_secret in the body, or a client_assertion.'

export interface AuthDeps {
  config: Pick<Config, 'JWT_ISSUER' | 'JWT_AUDIENCE' | 'OAUTH_FIRST_PARTY_CLIENT_ID' | 'adminAudience'>
  keyring: Keyring
  clock: Clock
  sessions: Sessions
  clients: Clients
}

type Kind = TokenType | 'any'

/** The type a token claims to be, read before its signature is checked: it only picks the key. */
function claimedType (payload: unknown): TokenType {
  const type = (payload as { token_type?: unknown } | null)?.token_type
  if (type !== 'access' && type !== 'refresh') throw new TokenNotValidError()
  return type
}

// A token introspection does not speak of to this client: answered inactive.
class NotAddressed extends Error {}

const decode = createDecoder({ complete: true })

/**
 * Who is this, and what may it do (atproto's auth verifier): token text becomes verified claims
 * (fast-jwt, https://github.com/nearform/fast-jwt), claims a live identity, a client's
 * credentials an authenticated client; one verb, `authorize`, answers scope, audience, aal and
 * the admin API's rule for forward auth, introspection and the admin guard alike.
 */
export function createAuth ({ config, keyring, clock, sessions, clients }: AuthDeps) {
  // One verifier per kind and key. The secret is the key the keyring names for the header; in
  // `any`, either kind, the key of the kind the token claims (a refresh key signs only refresh
  // tokens, and the claim is verified with the signature). Expiry is checked by parseClaims
  // against the application clock. The audience of a refresh token is JWT_AUDIENCE; an access
  // token's is JWT_AUDIENCE for a user's, one of the client's own for a service's: checked by
  // `audienceChecked` once the kind is known.
  const verifiers = new Map<string, (token: string) => unknown>()
  function verifierFor (kind: Kind, key: string): (token: string) => unknown {
    const name = `${kind}\n${key}`
    let verifier = verifiers.get(name)
    if (verifier === undefined) {
      // The body's tokens (`any`): fast-jwt keeps those that verified (by the token's hash), so
      // a service checking one token again and again pays for one signature check.
      verifier = createVerifier({ key, allowedIss: config.JWT_ISSUER, ...(kind === 'refresh' ? { allowedAud: config.JWT_AUDIENCE } : {}), ignoreExpiration: true, cache: kind === 'any' })
      verifiers.set(name, verifier)
    }
    return verifier
  }

  // The payload of a token whose signature, issuer (and a refresh token's audience) hold; the
  // keyring's errors (a database outage among them) as they are, any other failure a 401.
  async function verifiedPayload (token: string, kind: Kind): Promise<unknown> {
    let decoded: { header: JoseHeader, payload: unknown }
    try {
      decoded = decode(token) as { header: JoseHeader, payload: unknown }
    } catch {
      throw new TokenNotValidError()
    }
    const key = await keyring.keyFor(decoded.header, kind === 'any' ? claimedType(decoded.payload) : kind)
    try {
      return verifierFor(kind, key)(token)
    } catch (error) {
      if (error instanceof TokenError) throw new TokenNotValidError()
      throw error
    }
  }

  // Access tokens verified lately, by their exact text: a signature check, and decoding the
  // token to choose its key, are most of a request's work, and a client sends its token again
  // and again. Only tokens that verified are kept, at most a minute; their claims are checked
  // (expiry on the application clock) on every request, and the session as ever.
  const verified = new TtlCache<string, unknown>({ ttlMs: 60_000, max: 1000 })
  async function accessPayload (token: string): Promise<unknown> {
    const hit = verified.get(token)
    if (hit !== undefined) return hit
    const payload = await verifiedPayload(token, 'access')
    verified.set(token, payload)
    return payload
  }

  // A user's token is for JWT_AUDIENCE and nothing else (RFC 8725 §3.9); a service's audience
  // is judged against its client (clients.liveClient).
  const audienceChecked = (claims: VerifiedClaims): VerifiedClaims => {
    if (claims.kind === 'user' && claims.claims.aud !== config.JWT_AUDIENCE) throw new TokenNotValidError()
    return claims
  }

  const notLive = (): Error => new TokenNotValidError()

  /**
   * Whom an exchanged token speaks for, if it is still live: the client acting enabled and still
   * allowed to exchange toward its audience (a policy changed or a client disabled stops it at
   * once), each client that acted before it enabled, and its subject live: the user's session
   * active (a logout ends it), or the subject client enabled.
   */
  async function liveExchanged (claims: ExchangedClaims): Promise<Exchanged | undefined> {
    // Never for the users' audience or the admin API's, whatever a client's policy once said.
    if (claims.aud === config.JWT_AUDIENCE || claims.aud === config.adminAudience) return undefined
    const chain = chainOf(claims.act)
    const actors = await Promise.all(chain.map((actor) => clients.find(actor.sub)))
    // Each client of the chain enabled, and still allowed to exchange toward the audience of the token it made.
    const allowed = actors.every((actor, i) => actor !== undefined && !actor.disabled && actor.exchangeAudiences.includes(chain[i]!.aud ?? claims.aud))
    if (!allowed) return undefined
    const client = actors[0]!
    // The scopes every client of the chain (and a service subject) still holds.
    const holders = [...actors as ServiceClient[]]
    let subject: Exchanged['subject']
    if (claims.user_id !== undefined) {
      const user = await sessions.liveUser({ token_type: 'access', sid: claims.sid!, user_id: claims.user_id, jti: claims.jti })
      if (user === undefined) return undefined
      subject = { kind: 'user', user }
    } else {
      const service = await clients.find(claims.sub)
      if (service === undefined || service.disabled) return undefined
      subject = { kind: 'service', client: service }
      holders.push(service)
    }
    const scopes = scopesOf(claims.scope).filter((scope) => holders.every((holder) => holder.scopes.includes(scope)))
    return { kind: 'exchanged', claims, subject, client, scopes }
  }

  /**
   * Whom verified claims speak for, if the token is still live: a user's access token of an
   * active session, a refresh token not yet used, a service token of an enabled client, an
   * exchanged token (liveExchanged).
   */
  async function identify (claims: VerifiedClaims): Promise<Identity | undefined> {
    if (claims.kind === 'user') {
      const user = await sessions.liveUser(claims.claims)
      return user === undefined ? undefined : { kind: 'user', claims: claims.claims, user }
    }
    if (claims.kind === 'exchanged') return await liveExchanged(claims.claims)
    const live = await clients.liveClient(claims.claims)
    return live === undefined ? undefined : { kind: 'service', claims: claims.claims, ...live }
  }

  /**
   * What a subject may do: throws what it lacks (RFC 6750 §3.1's insufficient_scope, the
   * audience, aal2), else answers its live identity (a client that authenticated is its own).
   * A token is judged on its claims first, then on whether it is still live: a gateway that
   * names the wrong audience hears so whatever became of the session.
   */
  async function authorize (subject: VerifiedClaims, need: Requirement): Promise<Identity>
  async function authorize (subject: { kind: 'client', client: ServiceClient }, need: Requirement): Promise<{ kind: 'client', client: ServiceClient }>
  async function authorize (subject: Subject, need: Requirement): Promise<Identity | { kind: 'client', client: ServiceClient }> {
    const elsewhere = need.elsewhere ?? (() => new WrongAudienceError())
    // RFC 6750 §3.1: the first scope asked that is not held.
    const requireScopes = (held: string[]): void => {
      const missing = (need.scopes ?? []).find((scope) => !held.includes(scope))
      if (missing !== undefined) throw new InsufficientScopeError(missing)
    }
    if (subject.kind === 'client') {
      requireScopes(subject.client.scopes)
      // RFC 7662 §4: a client learns only of the tokens addressed to it (clients.mayIntrospect).
      if (need.audience !== undefined && !clients.mayIntrospect(subject.client, need.audience)) throw elsewhere()
      return subject
    }
    const { audience } = need
    if (subject.kind === 'user') {
      // The admin API is for services alone.
      if (audience !== undefined && (audience !== subject.claims.aud || audience === config.adminAudience)) throw elsewhere()
      const user = await sessions.userOf(subject.claims)
      if (user === undefined) throw notLive()
      // Users hold no scopes (yet): a path that requires one is for services.
      requireScopes([])
      if (need.aal === 'aal2' && authContextOf(subject.claims).aal !== 'aal2') throw new Aal2RequiredError()
      return { kind: 'user', claims: subject.claims, user }
    }
    // One audience per token: a gateway that names none would let a token meant for one
    // service through to every other.
    if (audience === undefined) throw new AudienceRequiredError()
    // A service signs in with no person behind it: no assurance level of a user's sign-in
    // applies. A client acting for a user has the user's.
    if (need.aal === 'aal2' && (subject.kind === 'service' || subject.claims.aal !== 'aal2')) throw new Aal2RequiredError()
    // The admin API takes a service's own tokens, never one acting for somebody else.
    if (audience !== subject.claims.aud || (subject.kind === 'exchanged' && audience === config.adminAudience)) throw elsewhere()
    // Verified with allowExpired (the admin guard), once its audience is known to be the caller's: what is wrong with it may be said.
    if (subject.claims.exp * 1000 <= clock.now().getTime()) throw new TokenExpiredError()
    if (subject.kind === 'exchanged') {
      const live = await liveExchanged(subject.claims)
      if (live === undefined) throw notLive()
      requireScopes(live.scopes)
      return live
    }
    const live = await clients.liveClient(subject.claims)
    if (live === undefined) throw notLive()
    requireScopes(live.scopes)
    return { kind: 'service', claims: subject.claims, ...live }
  }

  /**
   * The client of an OAuth request (RFC 6749 §2.3): null for the first-party client, public
   * (users' tokens are its: no client authentication), where a public client is taken; else the
   * enabled client its credentials prove (clients.authenticate), or InvalidClientError.
   */
  async function authenticateClient (claim: ClientClaim, options: { publicClient: false }): Promise<ServiceClient>
  async function authenticateClient (claim: ClientClaim, options: { publicClient: boolean }): Promise<ServiceClient | null>
  async function authenticateClient (claim: ClientClaim, { publicClient }: { publicClient: boolean }): Promise<ServiceClient | null> {
    if (claim !== undefined && claim.method !== 'none') return await clients.authenticate(claim)
    if (!publicClient) throw new InvalidClientError(NO_CLIENT_CREDENTIALS)
    if (claim !== undefined && claim.id !== config.OAUTH_FIRST_PARTY_CLIENT_ID) throw new InvalidClientError(`the only public client is ${config.OAUTH_FIRST_PARTY_CLIENT_ID}; any other authenticates.`)
    return null
  }

  const verifyAny = async (token: string): Promise<VerifiedClaims> => audienceChecked(parseAnyClaims(await verifiedPayload(token, 'any'), 'any', clock.now()))
  const verifyRefresh = async (token: string): Promise<TokenClaims> => parseClaims(await verifiedPayload(token, 'refresh'), 'refresh', clock.now())

  return {
    /** The claims of a user's access token, verified, its session not checked; expired ones too with `allowExpired`. */
    async verifyAccess (token: string, { allowExpired = false } = {}): Promise<TokenClaims> {
      const claims = parseClaims(await accessPayload(token), 'access', clock.now(), { allowExpired })
      if (claims.aud !== config.JWT_AUDIENCE) throw new TokenNotValidError()
      return claims
    },

    /** The claims of an access token, a user's or a service's, verified; neither session nor client checked; expired ones too with `allowExpired`. */
    async verifyAnyAccess (token: string, { allowExpired = false } = {}): Promise<VerifiedClaims> {
      return audienceChecked(parseAnyClaims(await accessPayload(token), 'access', clock.now(), { allowExpired }))
    },

    /** The claims of a refresh token, verified. */
    verifyRefresh,

    /** The claims of a token of any type and kind, verified. */
    verifyAny,

    /** The user of an access token's session, if that session is active; a 401 otherwise. */
    async sessionUser (claims: TokenClaims): Promise<SessionUser> {
      // Checked on every request: a logged-out or revoked session stops working here at once.
      const user = await sessions.userOf(claims)
      if (user === undefined) throw notLive()
      return user
    },

    identify,
    authorize,
    authenticateClient,

    /**
     * Token revocation (RFC 7009 §2.1): a user's token ends its session, for the first-party
     * client (`client` null) alone; a service's own tokens are one signature each, which nothing
     * revokes. A token that is not valid is no error (§2.2).
     */
    async revoke (client: ServiceClient | null, token: string, caller: Caller): Promise<void> {
      let claims
      try {
        claims = await verifyAny(token)
      } catch (error) {
        if (error instanceof DatabaseUnavailableError) throw error
        return
      }
      if (claims.kind !== 'user') {
        if (client?.id !== claims.claims.client_id) throw new UnauthorizedClientError('The token was issued to another client.')
        throw new UnsupportedTokenTypeError()
      }
      if (client !== null) throw new UnauthorizedClientError('The token was issued to another client.')
      await sessions.signOut(claims.claims, 'current', caller)
    },

    /**
     * What introspection (RFC 7662) may tell `introspector` of a token: its live identity, or
     * nothing (inactive). The introspector holds `introspect` (403 otherwise). A resource server asks
     * whether a Bearer token may pass: only an access token may; a refresh token is active for
     * authgate alone (§2.2 lets the server decide what it reports). A token is active only for
     * a client it is addressed to: §4 lets the server answer inactive to a client that should
     * not learn of a token, and many resource servers take `active` without checking `aud`.
     */
    async introspect (introspector: ServiceClient, token: string): Promise<Identity | undefined> {
      await authorize({ kind: 'client', client: introspector }, { scopes: [INTROSPECT_SCOPE] })
      let identity
      try {
        identity = await identify(await verifyAny(token))
      } catch (error) {
        // Any token that does not verify (a bad signature, nbf ahead, a crit header, anything) is
        // simply not active; a database outage stays a 503.
        if (error instanceof DatabaseUnavailableError) throw error
        return undefined
      }
      if (identity === undefined || identity.claims.token_type !== 'access') return undefined
      try {
        await authorize({ kind: 'client', client: introspector }, { audience: identity.claims.aud, elsewhere: () => new NotAddressed() })
      } catch (error) {
        if (error instanceof NotAddressed) return undefined
        throw error
      }
      return identity
    }
  }
}

export type Auth = ReturnType<typeof createAuth>
