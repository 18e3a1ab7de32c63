import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { Aal2RequiredError, RecentSignInRequiredError, TokenExpiredError, TokenNotValidError } from '../../errors.ts'

const UUID = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
const Seconds = Type.Integer({ minimum: 0, maximum: 253402300799 })

/**
 * simplejwt's claims (token_type, user_id, jti, iat, exp) plus sub, sid, iss, aud and sxp, as a
 * signed token must carry them before any of them reaches SQL: ids that fit their columns.
 */
export const TokenClaimsSchema = Type.Object({
  token_type: Type.Union([Type.Literal('access'), Type.Literal('refresh')]),
  user_id: Type.Integer({ minimum: 1, maximum: 2147483647 }),
  sub: Type.String({ pattern: '^[1-9][0-9]{0,9}$' }),
  sid: Type.String({ pattern: UUID }),
  jti: Type.String({ pattern: UUID }),
  iat: Seconds,
  exp: Seconds,
  iss: Type.String(),
  aud: Type.String(),
  // RFC 9068 §2.2: the client the token was issued to, in access tokens: the first-party
  // client (OAUTH_FIRST_PARTY_CLIENT_ID). Tokens issued before it existed lack it.
  client_id: Type.Optional(Type.String()),
  // The user's roles (ROLES) when the token was signed (RFC 9068 §7.2.1.1). Tokens issued
  // before roles existed lack it.
  roles: Type.Optional(Type.Array(Type.String({ maxLength: 64 }), { maxItems: 64 })),
  // How the session was signed in (NIST 800-63B's assurance level, RFC 8176's methods, OIDC's
  // auth_time), in both tokens; a refresh keeps them. Tokens issued before second factors lack them: aal1.
  aal: Type.Optional(Type.Union([Type.Literal('aal1'), Type.Literal('aal2')])),
  amr: Type.Optional(Type.Array(Type.String({ maxLength: 16 }), { maxItems: 8 })),
  auth_time: Type.Optional(Seconds),
  // authgate's own, in refresh tokens only (never published: HS256 under a key of ours): the
  // end of the session, so a refresh signs the next pair before it reaches the database.
  // Tokens issued before it existed lack it.
  sxp: Type.Optional(Seconds)
})
export type TokenClaims = Static<typeof TokenClaimsSchema>
export type TokenType = TokenClaims['token_type']

/** How a session was signed in: its assurance level, the methods (RFC 8176), when. */
export interface AuthContext { aal: 'aal1' | 'aal2', amr: string[], auth_time: number }

/** The sign-in a token's session had; aal1 by a password for a token issued before these claims. */
export const authContextOf = (claims: Pick<TokenClaims, 'aal' | 'amr' | 'auth_time' | 'iat'>): AuthContext =>
  ({ aal: claims.aal ?? 'aal1', amr: claims.amr ?? ['pwd'], auth_time: claims.auth_time ?? claims.iat })

/** How long a sign-in counts as recent: adding a way in (a factor, a linked identity) takes one. */
const RECENT_S = 10 * 60

/**
 * Refuses a token whose sign-in (or step-up) is older than RECENT_S at `nowS`, or, with `aal2`,
 * whose session is not aal2. A stolen token of an older sign-in, a refreshed one included (a
 * refresh keeps auth_time), cannot add an authenticator or an identity of the thief's and lock
 * its owner out.
 */
export function requireRecent (claims: TokenClaims, nowS: number, { aal2 }: { aal2: boolean }): void {
  if (aal2 && authContextOf(claims).aal !== 'aal2') throw new Aal2RequiredError()
  if ((claims.auth_time ?? 0) < nowS - RECENT_S) throw new RecentSignInRequiredError()
}

const checkClaims = TypeCompiler.Compile(TokenClaimsSchema)

/**
 * The claims of a token whose signature, issuer and audience were verified, if they have the
 * expected shape and type and the token has not expired at `now`; a 401 error otherwise.
 * `allowExpired` is for signing out only: an expired token may still end its own session.
 */
export function parseClaims (payload: unknown, type: TokenType | 'any', now: Date, { allowExpired = false } = {}): TokenClaims {
  // A token of another grant (a service's, an exchanged one) is never a user's own, whatever else it carries.
  if (!checkClaims.Check(payload) || (type !== 'any' && payload.token_type !== type) || payload.sub !== String(payload.user_id) || 'gty' in payload || 'act' in payload) {
    throw new TokenNotValidError()
  }
  // RFC 7519 §4.1.4: expired once the current time is at or after exp.
  if (!allowExpired && payload.exp * 1000 <= now.getTime()) throw new TokenExpiredError()
  return payload
}

// The claims of a token authgate just signed: read, not verified.
const claimsOfSigned = (token: string): { exp: number, sid: string } => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString())

/** The session of a token authgate just signed. */
export const sessionOfSigned = (token: string): string => claimsOfSigned(token).sid

/** How many seconds a token authgate just signed has left at `now` (its expires_in; a cookie lives as long). */
export const secondsLeft = (token: string, now: Date): number => Math.max(0, claimsOfSigned(token).exp - Math.floor(now.getTime() / 1000))

/** The claim that tells a service's token (client credentials) from a user's. */
export const SERVICE_GRANT = 'client_credentials'

/**
 * A service's access token (RFC 9068): the client is its subject, one audience, the scopes it
 * was granted; `gty` says it was issued for client credentials, so no verifier can take it for
 * a user's (it has no user_id, no sid).
 */
export const ServiceClaimsSchema = Type.Object({
  token_type: Type.Literal('access'),
  gty: Type.Literal(SERVICE_GRANT),
  sub: Type.String({ minLength: 1, maxLength: 64 }),
  client_id: Type.String({ minLength: 1, maxLength: 64 }),
  scope: Type.String({ maxLength: 4096 }),
  jti: Type.String({ pattern: UUID }),
  iat: Seconds,
  exp: Seconds,
  iss: Type.String(),
  aud: Type.String()
})
export type ServiceClaims = Static<typeof ServiceClaimsSchema>

const checkServiceClaims = TypeCompiler.Compile(ServiceClaimsSchema)

/** The claim of a token issued by a token exchange (RFC 8693): `act` names who acts for its subject. */
export const EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange'
/** How many actors one token may name, the outermost and those nested in it: an exchange of an exchanged token adds one. */
export const MAX_ACTORS = 4

/**
 * RFC 8693 §4.1: the client that acts, and, nested, the one that acted before it. A nested
 * actor also names the audience of the token it made (`aud`, authgate's own member: prior actors
 * are informational to other verifiers), so that its policy is judged again on each use.
 */
export interface Actor { sub: string, aud?: string, act?: Actor }
const ActorSchema = Type.Recursive((This) => Type.Object({
  sub: Type.String({ minLength: 1, maxLength: 64 }),
  aud: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
  act: Type.Optional(This)
}))

/** The actors of an `act` claim, the one acting now first. */
export function chainOf (act: Actor): Actor[] {
  const chain: Actor[] = []
  for (let actor: Actor | undefined = act; actor !== undefined; actor = actor.act) chain.push(actor)
  return chain
}

/** The clients of an `act` claim, the one acting now first. */
export const actorsOf = (act: Actor): string[] => chainOf(act).map((actor) => actor.sub)

/**
 * A token a client got by exchanging another (RFC 8693, RFC 9068's claims): for `aud` alone, with
 * `scope`, issued to the client acting (`client_id`, `act.sub`) for the subject of the token it
 * gave (`sub`): a user, whose session (`sid`) and sign-in (`aal`, `amr`, `auth_time`) it keeps,
 * or a service client. `gty` tells it from a user's or a service's own token.
 */
export const ExchangedClaimsSchema = Type.Object({
  token_type: Type.Literal('access'),
  gty: Type.Literal(EXCHANGE_GRANT),
  sub: Type.String({ minLength: 1, maxLength: 64 }),
  client_id: Type.String({ minLength: 1, maxLength: 64 }),
  act: ActorSchema,
  scope: Type.String({ maxLength: 4096 }),
  jti: Type.String({ pattern: UUID }),
  iat: Seconds,
  exp: Seconds,
  iss: Type.String(),
  aud: Type.String(),
  // The subject's, when it is a user.
  user_id: Type.Optional(TokenClaimsSchema.properties.user_id),
  sid: Type.Optional(TokenClaimsSchema.properties.sid),
  roles: TokenClaimsSchema.properties.roles,
  aal: TokenClaimsSchema.properties.aal,
  amr: TokenClaimsSchema.properties.amr,
  auth_time: TokenClaimsSchema.properties.auth_time
})
export type ExchangedClaims = Static<typeof ExchangedClaimsSchema>

const checkExchangedClaims = TypeCompiler.Compile(ExchangedClaimsSchema)

/** What a verified token proves: a user's session (access or refresh), a service client (access), or a client acting for either (access). */
export type VerifiedClaims = { kind: 'user', claims: TokenClaims } | { kind: 'service', claims: ServiceClaims } | { kind: 'exchanged', claims: ExchangedClaims }

// An exchanged token's claims hold together: the actor is its client, and names no audience of
// its own (the token's is); each actor before it names the audience of the token it made; a
// user's id is its sub, with the session; a chain of actors no longer than MAX_ACTORS.
function wellFormed (claims: ExchangedClaims): boolean {
  const [actor, ...before] = chainOf(claims.act)
  return actor!.sub === claims.client_id && actor!.aud === undefined && before.every((prior) => prior.aud !== undefined) &&
    before.length < MAX_ACTORS &&
    (claims.user_id === undefined ? claims.sid === undefined : claims.sid !== undefined && claims.sub === String(claims.user_id))
}

/**
 * The claims of a verified token of any kind, told apart by `gty`; shaped, of `type` and
 * unexpired, or a 401 error, as parseClaims. A service's or an exchanged token is only ever an access token.
 */
export function parseAnyClaims (payload: unknown, type: TokenType | 'any', now: Date, options: { allowExpired?: boolean } = {}): VerifiedClaims {
  const gty = (payload as { gty?: unknown } | null)?.gty
  if (gty !== SERVICE_GRANT && gty !== EXCHANGE_GRANT) return { kind: 'user', claims: parseClaims(payload, type, now, options) }
  let verified: VerifiedClaims
  if (type === 'refresh') throw new TokenNotValidError()
  if (checkServiceClaims.Check(payload) && payload.sub === payload.client_id) verified = { kind: 'service', claims: payload }
  else if (checkExchangedClaims.Check(payload) && wellFormed(payload)) verified = { kind: 'exchanged', claims: payload }
  else throw new TokenNotValidError()
  if (options.allowExpired !== true && verified.claims.exp * 1000 <= now.getTime()) throw new TokenExpiredError()
  return verified
}
