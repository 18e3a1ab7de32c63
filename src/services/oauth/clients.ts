import { createHash, createPublicKey, randomBytes, randomUUID, type JsonWebKey } from 'node:crypto'
import { createDecoder, createVerifier, type Algorithm } from 'fast-jwt'
import { sql, type Selectable } from 'kysely'
import type { Config } from '../../config.ts'
import type { Db } from '../../db/index.ts'
import type { OAuthClientsTable } from '../../db/types.ts'
import {
  ClientNotFoundError, InvalidClientError, InvalidScopeError, InvalidTargetError, UnauthorizedClientError, ValidationFailedError,
  type FieldError
} from '../../errors.ts'
import { seconds, type Clock } from '../../lib/clock.ts'
import { safeEqual } from '../../lib/constant-time.ts'
import { isProviderUrl } from '../../lib/upstream-providers.ts'
import type { NotifiedCache } from '../../lib/notified-cache.ts'
import type { AuditTrail, Caller } from '../audit.ts'
import { SERVICE_GRANT, type ServiceClaims } from '../auth/claims.ts'
import type { Keyring } from '../keys/keyring.ts'

/** A public JWKS a client signs its assertions with (private_key_jwt). */
export interface ClientJwks { keys: JsonWebKey[] }

/**
 * How a client authenticates (RFC 7591's token_endpoint_auth_method), one way each: with its
 * secret, which it may send by HTTP Basic or in the body (client_secret_post: the same secret in
 * another place, RFC 6749 §2.3.1), or with a signed assertion (RFC 7523), and then it has no
 * secret; or not at all (`none`): a workload client, whose JWT bearer grant (RFC 7523 §2.1) is
 * a token of the issuer it trusts.
 */
export type TokenEndpointAuthMethod = 'client_secret_basic' | 'private_key_jwt' | 'none'

/**
 * What a workload client trusts (RFC 7523 §2.1, issue 30): tokens of one issuer (a Kubernetes
 * cluster, a CI's OIDC issuer, another authgate) for one of its subjects, signed with one
 * algorithm, by a key of the issuer's JWKS (its discovery document's jwks_uri, or `jwksUri`).
 */
export interface TrustedIssuer { issuer: string, jwksUri: string | null, subjects: string[], alg: Algorithm }

/** A service identity (OAuth 2.0 client credentials). */
export interface ServiceClient {
  id: string
  name: string
  /** What its tokens may carry. */
  scopes: string[]
  /** What its tokens may be for: each token names one. */
  audiences: string[]
  tokenTtlS: number
  /** How it proves itself: a secret, or a key of `jwks`. */
  authMethod: TokenEndpointAuthMethod
  /** For private_key_jwt (RFC 7523). */
  jwks: ClientJwks | null
  /** For a workload client (`none`). */
  trust: TrustedIssuer | null
  /** The audiences it may exchange the tokens it is given toward (RFC 8693): none, it exchanges none. */
  exchangeAudiences: string[]
  disabled: boolean
  createdAt: Date
  /** One of INTROSPECTION_CLIENTS: configured, not in the database, for introspection only. */
  configured?: true
}

/** A client and its secrets' hashes, as authentication needs it; each secret works until `expiresAt` (ms) if set. */
export interface ClientRecord { client: ServiceClient, secrets: Array<{ hash: string, expiresAt: number | null }> }
/** What a replica keeps of a client id: its record, or null for an id no client has. */
export type CachedClient = ClientRecord | null

export interface NewClient {
  name: string
  scopes: string[]
  audiences: string[]
  tokenTtlS?: number
  /** A key client (private_key_jwt): no secret is made. */
  jwks?: ClientJwks
  /** A workload client: no secret, no key; the issuer it trusts. */
  trust?: TrustedIssuer
  exchangeAudiences?: string[]
}

/** What `update` may change of a client: its policy. Each list given replaces the one it had. */
export type ClientChanges = Partial<Pick<NewClient, 'scopes' | 'audiences' | 'exchangeAudiences' | 'tokenTtlS'> & { subjects: string[] }>

/** How a client proves itself (RFC 6749 §2.3.1, RFC 7523 §2.2): src/http/client-credentials.ts reads it from a request. */
export type ClientCredentials =
  | { method: 'client_secret_basic' | 'client_secret_post', id: string, secret: string }
  | { method: 'private_key_jwt', assertion: string, /** client_id, when the request names it too. */ id?: string }

/** A service access token as the token endpoint answers it (RFC 6749 §5.1). */
export interface IssuedToken { access_token: string, token_type: 'Bearer', expires_in: number, scope: string }

export interface ClientsDeps {
  db: Db
  clock: Clock
  keyring: Keyring
  config: Pick<Config, 'JWT_AUDIENCE' | 'JWT_ISSUER' | 'introspectionClients' | 'adminAudience'>
  audit: AuditTrail
  /** Clients as they were read, and ids found unknown (null), kept true by notifications (PostgreSQL); none: each lookup reads them. */
  cache?: NotifiedCache<CachedClient>
  /** Hears of each token issued (metrics). */
  onIssue?: () => void
}

/** The default lifetime of a client's tokens, and the longest: never unlimited. */
export const CLIENT_TOKEN_TTL_S = { default: 600, max: 86_400 } as const
/** authgate's own scopes: introspection (RFC 7662) for the clients holding it, of the tokens addressed to them. */
export const INTROSPECT_SCOPE = 'introspect'
/** What widens introspection: users' tokens (JWT_AUDIENCE) too, or every token. */
export const INTROSPECT_USERS_SCOPE = 'introspect:users'
export const INTROSPECT_ALL_SCOPE = 'introspect:all'
/** The admin API's (tokens for `<PUBLIC_URL>/api/admin`): reading users, changing them, their sessions, the audit trail. */
export const ADMIN_SCOPES = {
  usersRead: 'admin:users:read',
  usersWrite: 'admin:users:write',
  sessions: 'admin:sessions',
  auditRead: 'admin:audit:read'
} as const
/** The longest grace `rotateSecret` gives the secret it replaces. */
export const MAX_SECRET_GRACE_S = 30 * 86_400
/** RFC 7523's client assertion type. */
export const JWT_BEARER_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
/** What a client assertion may be signed with: asymmetric algorithms only (the JWKS is public). */
export const ASSERTION_ALGORITHMS: Algorithm[] = ['ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'EdDSA']
/**
 * How far ahead an assertion's exp may be (RFC 7523 §3 lets the server refuse one "unreasonably
 * far in the future"): an hour, what Authlib's PrivateKeyJWT and others sign by default and Okta
 * takes. Its jti is kept (single use, every replica) until the exp and the skew have passed.
 */
export const ASSERTION_MAX_LIFETIME_S = 3600
/** How far a client's (or a trusted issuer's) clock may run from ours, in milliseconds. */
export const ASSERTION_SKEW_MS = 30_000

/**
 * Why client authentication failed, as error_description says it (RFC 6749 §5.2). An unknown
 * client and a wrong secret (or key) read the same: nobody learns from it whether an id exists
 * without proving to be its client. What is said only after the proof, or of the request
 * itself, may be said.
 */
export const CLIENT_REFUSALS = {
  secret: 'unknown client, or a wrong or expired secret.',
  assertionKey: 'unknown client, or the client_assertion is not signed by a key of its JWKS.',
  disabled: 'the client is disabled.',
  secretOfKeyClient: 'the client is registered for private_key_jwt: send a client_assertion signed with its key (RFC 7523), it has no secret.',
  assertionOfSecretClient: 'the client is registered for client_secret_basic: send its secret (HTTP Basic, or client_id and client_secret in the body), not a client_assertion.',
  workload: 'the client is a workload client: it has no secret and no key; it gets tokens with grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer and a token of the issuer it trusts (RFC 7523 §2.1).',
  replayed: 'the client_assertion was used already: sign a new one, with a new jti, for each request (RFC 7523 §3).'
} as const
// RFC 6749 §3.3: a scope token is visible ASCII but " and \.
const SCOPE = /^[\x21\x23-\x5b\x5d-\x7e]{1,128}$/
// Client ids of the database: 128 random bits, hex.
const CLIENT_ID = /^[0-9a-f]{32}$/

/** RFC 7519 §2's NumericDate as authgate takes one: seconds from 1970 to the end of the year 9999 (what a Date can print). */
export const isNumericDate = (value: unknown): value is number => typeof value === 'number' && value >= 0 && value <= 253402300799

/** RFC 7523 §3: what an assertion's audience may be: the token endpoint, or (RFC 7523bis) the issuer. */
export const assertionAudiencesOf = (config: Pick<Config, 'JWT_ISSUER'>): string[] => [config.JWT_ISSUER, `${config.JWT_ISSUER.replace(/\/$/, '')}/oauth/token`]

const hashOf = (secret: string): string => createHash('sha256').update(secret).digest('base64url')
// The stand-in an unknown client's secret is compared with: the same work as a known one's.
const NO_SECRET = [{ hash: hashOf('authgate: no such client'), expiresAt: null }]
const decode = createDecoder({ complete: true })

/** What a client may do, as the audit trail records it. */
const policyOf = (client: ServiceClient) => ({
  scopes: client.scopes,
  audiences: client.audiences,
  token_ttl_s: client.tokenTtlS,
  exchange_audiences: client.exchangeAudiences,
  ...(client.trust === null ? {} : { trusted_issuer: client.trust.issuer, trusted_subjects: client.trust.subjects, trusted_alg: client.trust.alg })
})

/** The scopes of an RFC 6749 §3.3 scope parameter: space-separated, each once. */
export function scopesOf (parameter: string | undefined): string[] {
  return [...new Set((parameter ?? '').split(' ').filter(Boolean))]
}

/** Whether a trusted issuer's URL may be used: as an identity provider's (isProviderUrl), and fit for its column. */
export const isIssuerUrl = (value: string): boolean => value.length <= 512 && isProviderUrl(value)

// RFC 8707 §2: an absolute URI without a fragment; the users' audience is theirs alone.
function audienceProblem (audience: string, userAudience: string): string | undefined {
  if (!URL.canParse(audience) || audience.includes('#') || audience.length > 512) return `${JSON.stringify(audience)} is not an absolute URI without a fragment`
  if (audience === userAudience) return `${JSON.stringify(audience)} is the audience of users' tokens (JWT_AUDIENCE)`
  return undefined
}

/** Why a client's definition is refused, field by field. */
function problems (client: NewClient, { userAudience, adminAudience }: { userAudience: string, adminAudience: string }): FieldError[] {
  const found: FieldError[] = []
  if (client.name.trim() === '' || client.name.length > 200) found.push({ field: 'name', message: 'must be 1 to 200 characters' })
  if (client.scopes.length > 100) found.push({ field: 'scope', message: 'at most 100' })
  for (const scope of client.scopes) if (!SCOPE.test(scope)) found.push({ field: 'scope', message: `${JSON.stringify(scope)} is not a scope (RFC 6749 §3.3: visible ASCII but " and \\, no space)` })
  if (client.audiences.length === 0 || client.audiences.length > 20) found.push({ field: 'audience', message: 'one to 20' })
  for (const audience of client.audiences) {
    const problem = audienceProblem(audience, userAudience)
    if (problem !== undefined) found.push({ field: 'audience', message: problem })
  }
  const exchange = client.exchangeAudiences ?? []
  if (exchange.length > 20) found.push({ field: 'exchange_to', message: 'at most 20' })
  for (const audience of exchange) {
    // The admin API takes a service's own tokens, never one acting for somebody else.
    const problem = audienceProblem(audience, userAudience) ?? (audience === adminAudience ? `${JSON.stringify(audience)} is the admin API's: it takes a service's own tokens only` : undefined)
    if (problem !== undefined) found.push({ field: 'exchange_to', message: problem })
  }
  if (client.trust !== undefined) {
    const { issuer, jwksUri, subjects, alg } = client.trust
    if (client.jwks !== undefined) found.push({ field: 'trust_issuer', message: 'a client trusts an issuer or has a JWKS, not both' })
    if (!isIssuerUrl(issuer)) found.push({ field: 'trust_issuer', message: `${JSON.stringify(issuer)} is not an https URL (http only on 127.0.0.1 or localhost) without query or fragment` })
    if (jwksUri !== null && !isIssuerUrl(jwksUri)) found.push({ field: 'trust_jwks_uri', message: `${JSON.stringify(jwksUri)} is not an https URL (http only on 127.0.0.1 or localhost) without query or fragment` })
    if (subjects.length === 0 || subjects.length > 100) found.push({ field: 'subject', message: 'one to 100: the exact subjects (sub) whose tokens it takes' })
    for (const subject of subjects) if (subject === '' || subject.length > 256) found.push({ field: 'subject', message: 'each 1 to 256 characters' })
    if (!ASSERTION_ALGORITHMS.includes(alg)) found.push({ field: 'trust_alg', message: `${JSON.stringify(alg)} is not one of ${ASSERTION_ALGORITHMS.join(', ')}` })
  }
  const ttl = client.tokenTtlS ?? CLIENT_TOKEN_TTL_S.default
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > CLIENT_TOKEN_TTL_S.max) found.push({ field: 'ttl', message: `1 s to ${CLIENT_TOKEN_TTL_S.max / 3600} h` })
  if (client.jwks !== undefined) {
    const keys = Array.isArray(client.jwks.keys) ? client.jwks.keys : []
    if (keys.length === 0 || keys.length > 10) found.push({ field: 'jwks', message: 'a JWKS of one to 10 keys' })
    for (const key of keys) {
      const algorithm = key.alg as Algorithm | undefined
      let publicKey = false
      try {
        publicKey = !('d' in key) && createPublicKey({ key, format: 'jwk' }).type === 'public'
      } catch {}
      if (!publicKey) found.push({ field: 'jwks', message: 'every key must be a public JWK (EC, RSA or OKP), no private part' })
      else if (algorithm !== undefined && !ASSERTION_ALGORITHMS.includes(algorithm)) found.push({ field: 'jwks', message: `alg ${algorithm} is not one of ${ASSERTION_ALGORITHMS.join(', ')}` })
    }
  }
  return found
}

const COLUMNS = [
  'id', 'name', 'scopes', 'audiences', 'token_ttl_s', 'token_endpoint_auth_method', 'jwks',
  'exchange_audiences', 'trusted_issuer', 'trusted_jwks_uri', 'trusted_subjects', 'trusted_alg', 'disabled_at', 'created_at'
] as const
type ClientRow = Pick<Selectable<OAuthClientsTable>, typeof COLUMNS[number]>
const toClient = (row: ClientRow): ServiceClient => ({
  id: row.id,
  name: row.name,
  scopes: row.scopes,
  audiences: row.audiences,
  tokenTtlS: row.token_ttl_s,
  authMethod: row.token_endpoint_auth_method,
  jwks: row.jwks,
  trust: row.trusted_issuer === null ? null : { issuer: row.trusted_issuer, jwksUri: row.trusted_jwks_uri, subjects: row.trusted_subjects ?? [], alg: row.trusted_alg as Algorithm },
  exchangeAudiences: row.exchange_audiences,
  disabled: row.disabled_at !== null,
  createdAt: row.created_at
})
const textArray = (values: string[]) => sql<string[]>`cast(${[...new Set(values)]} as text[])`

/**
 * Service identities: OAuth 2.0 clients with the scopes and audiences they may ask for, up to
 * two working secrets (SHA-256 of 256 random bits, compared in constant time: nothing to
 * stretch, so nothing to collapse under load) or else a JWKS for private_key_jwt; and their tokens
 * (RFC 9068), one signature each, no row written. Every change of a client is audited; every
 * replica hears of it (migration 0008's trigger) and forgets what it kept.
 */
export function createClients ({ db, clock, keyring, config, audit, cache, onIssue }: ClientsDeps) {
  // INTROSPECTION_CLIENTS: clients of the configuration, for introspection of users' tokens only:
  // the gateways in front of services that take users (docs/tokens.md).
  const configured = new Map([...config.introspectionClients].map(([id, secret]): [string, ClientRecord] => [id, {
    client: { id, name: 'INTROSPECTION_CLIENTS', scopes: [INTROSPECT_SCOPE, INTROSPECT_USERS_SCOPE], audiences: [], tokenTtlS: CLIENT_TOKEN_TTL_S.default, authMethod: 'client_secret_basic', jwks: null, trust: null, exchangeAudiences: [], disabled: false, createdAt: new Date(0), configured: true },
    secrets: [{ hash: hashOf(secret), expiresAt: null }]
  }]))
  const assertionAudiences = assertionAudiencesOf(config)

  // One statement: the client and its secrets that still work. The functions are pg_catalog's by
  // name and the product's operands both numeric: nothing another role plants in a schema of the
  // search path matches better (CVE-2018-1058; test/search-path.test.ts plants them).
  async function read (id: string): Promise<ClientRecord | undefined> {
    const row = await db.selectFrom('oauth_clients as c').select(COLUMNS.map((c) => `c.${c}` as const))
      .select((eb) => eb.selectFrom('oauth_client_secrets as s')
        .select(sql<Array<{ hash: string, expiresAt: number | null }>>`coalesce(pg_catalog.json_agg(pg_catalog.json_build_object('hash', s.secret_hash, 'expiresAt', cast(extract(epoch from s.expires_at) * cast(1000 as numeric) as bigint))), '[]')`.as('secrets'))
        .whereRef('s.client_id', '=', 'c.id')
        .where((w) => w.or([w('s.expires_at', 'is', null), w('s.expires_at', '>', clock.db())]))
        .as('secrets'))
      .where('c.id', '=', id)
      .executeTakeFirst()
    if (row === undefined) return undefined
    return { client: toClient(row), secrets: (row.secrets ?? []).map((s) => ({ hash: s.hash, expiresAt: s.expiresAt === null ? null : Number(s.expiresAt) })) }
  }

  // The reads under way, by client id: lookups of one id at once share one (a burst of requests
  // naming an unknown id is one read), unless something changed since it began.
  const reading = new Map<string, { generation: number, record: Promise<ClientRecord | undefined> }>()

  /**
   * A client and its working secrets: configured, else from the cache while it may be trusted,
   * else read. An id no client has is kept as unknown as briefly as a client (the cache's bound),
   * and forgotten on every replica as soon as a client of that id is made (the notification of
   * its insert), so nobody costs a read per request by naming one.
   */
  async function lookup (id: string): Promise<ClientRecord | undefined> {
    const fixed = configured.get(id)
    if (fixed !== undefined) return fixed
    if (!CLIENT_ID.test(id)) return undefined
    if (cache === undefined) return await read(id)
    const cached = cache.get(id)
    if (cached !== undefined) return cached ?? undefined
    const generation = cache.generation
    const pending = reading.get(id)
    if (pending !== undefined && pending.generation === generation) return await pending.record
    const record: Promise<ClientRecord | undefined> = read(id)
      .then((found) => {
        cache.set(id, found ?? null, generation)
        return found
      })
      .finally(() => {
        if (reading.get(id)?.record === record) reading.delete(id)
      })
    reading.set(id, { generation, record })
    return await record
  }

  /** A client of the database by id, for a command to change; NotFoundError when there is none. */
  async function stored (id: string): Promise<ServiceClient> {
    const record = configured.has(id) || !CLIENT_ID.test(id) ? undefined : await read(id)
    if (record === undefined) throw new ClientNotFoundError(id)
    return record.client
  }

  // Forgotten before the change and after it: a read that raced it is dropped (NotifiedCache's generation).
  async function changing<T> (id: string, change: () => Promise<T>): Promise<T> {
    cache?.forget(id)
    try {
      return await change()
    } finally {
      cache?.forget(id)
    }
  }

  const newSecret = (): string => randomBytes(32).toString('base64url')

  async function setDisabled (id: string, disabled: boolean, caller?: Caller): Promise<ServiceClient> {
    await stored(id)
    const row = await changing(id, () => db.updateTable('oauth_clients')
      .set({ disabled_at: disabled ? clock.db() : null })
      .where('id', '=', id)
      .returning(COLUMNS)
      .executeTakeFirstOrThrow())
    audit.record({ event: disabled ? 'client_disabled' : 'client_enabled', detail: { client_id: id } }, caller)
    return toClient(row)
  }

  const refuse = (why: string): Error => new InvalidClientError(why)

  // What RFC 7523 §3 asks of an assertion, judged before its client is looked up: each answer
  // says what is wrong with the assertion, and nothing of whether its client exists.
  function assertionProblem (header: Record<string, unknown>, payload: Record<string, unknown>, named: string | undefined, now: number): string | undefined {
    const { iss, sub, jti, exp, nbf, aud } = payload
    if (!ASSERTION_ALGORITHMS.includes(header.alg as Algorithm)) return `the client_assertion is signed with ${JSON.stringify(header.alg)}: one of ${ASSERTION_ALGORITHMS.join(', ')} is taken.`
    if (typeof sub !== 'string' || iss !== sub) return 'the client_assertion needs iss and sub, both the client id (RFC 7523 §3).'
    if (named !== undefined && named !== sub) return 'client_id differs from the sub of the client_assertion.'
    if (typeof jti !== 'string' || jti === '' || jti.length > 256) return 'the client_assertion needs a jti of at most 256 characters: each is used once.'
    const audiences = Array.isArray(aud) ? aud : [aud]
    if (!audiences.some((one) => assertionAudiences.includes(one as string))) return `the aud of the client_assertion must be the token endpoint (${assertionAudiences[1]}) or the issuer (${assertionAudiences[0]}).`
    if (!isNumericDate(exp)) return 'the client_assertion needs an exp (a NumericDate: seconds since 1970, up to the year 9999).'
    if (exp * 1000 + ASSERTION_SKEW_MS <= now) return `the client_assertion expired at ${new Date(exp * 1000).toISOString()}.`
    if (exp * 1000 - now > ASSERTION_MAX_LIFETIME_S * 1000 + ASSERTION_SKEW_MS) return `the client_assertion expires more than ${ASSERTION_MAX_LIFETIME_S} s ahead (exp ${new Date(exp * 1000).toISOString()}): authgate takes assertions of at most an hour.`
    if (nbf !== undefined && (typeof nbf !== 'number' || nbf * 1000 - ASSERTION_SKEW_MS > now)) return 'the client_assertion is not valid yet (nbf).'
    return undefined
  }

  async function verifyAssertion (assertion: string, named: string | undefined): Promise<ServiceClient> {
    let header: Record<string, unknown>, payload: Record<string, unknown>
    try {
      ({ header, payload } = decode(assertion) as { header: Record<string, unknown>, payload: Record<string, unknown> })
    } catch {
      throw refuse('the client_assertion is not a JWT.')
    }
    const now = clock.now().getTime()
    const problem = assertionProblem(header, payload, named, now)
    if (problem !== undefined) throw refuse(problem)
    const id = payload.sub as string
    const record = await lookup(id)
    if (record === undefined) throw refuse(CLIENT_REFUSALS.assertionKey)
    const jwks = record.client.jwks
    if (record.client.authMethod === 'none') throw refuse(CLIENT_REFUSALS.workload)
    if (record.client.authMethod !== 'private_key_jwt' || jwks === null) throw refuse(CLIENT_REFUSALS.assertionOfSecretClient)
    // The key the header names, else each in turn; never one the header carries. The claims were
    // judged above; the verifier checks them again with the signature.
    const keys = jwks.keys.filter((key) => header.kid === undefined || (key as { kid?: unknown }).kid === header.kid)
    const verified = keys.some((key) => {
      if (key.alg !== undefined && key.alg !== header.alg) return false
      try {
        const pem = createPublicKey({ key, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()
        createVerifier({ key: pem, algorithms: ASSERTION_ALGORITHMS, allowedAud: assertionAudiences, allowedIss: id, allowedSub: id, clockTimestamp: now, clockTolerance: ASSERTION_SKEW_MS, requiredClaims: ['exp', 'jti'] })(assertion)
        return true
      } catch {
        return false
      }
    })
    if (!verified) throw refuse(CLIENT_REFUSALS.assertionKey)
    if (record.client.disabled) throw refuse(CLIENT_REFUSALS.disabled)
    if (!await spend(id, payload.jti as string, payload.exp as number)) throw refuse(CLIENT_REFUSALS.replayed)
    return record.client
  }

  /**
   * Spends an assertion of the client (its jti, or what stands for it) once across replicas, for
   * as long as it could be presented (`exp`, seconds, and the skew): the primary key decides which
   * of two presentations is first; pruning deletes the row once it has expired. False when it was spent already.
   */
  async function spend (clientId: string, jti: string, exp: number): Promise<boolean> {
    const spent = await db.insertInto('oauth_client_assertions')
      .values({ client_id: clientId, jti, expires_at: new Date(exp * 1000 + ASSERTION_SKEW_MS) })
      .onConflict((oc) => oc.doNothing())
      .executeTakeFirst()
    return Number(spent.numInsertedOrUpdatedRows ?? 0n) === 1
  }

  /** A new client, and its first secret, shown this once; a key client (private_key_jwt) has none. */
  async function create (input: NewClient & { jwks: ClientJwks }, caller?: Caller): Promise<{ client: ServiceClient, secret: null }>
  async function create (input: NewClient & { jwks?: undefined }, caller?: Caller): Promise<{ client: ServiceClient, secret: string }>
  async function create (input: NewClient, caller?: Caller): Promise<{ client: ServiceClient, secret: string | null }>
  async function create (input: NewClient, caller?: Caller): Promise<{ client: ServiceClient, secret: string | null }> {
    const found = problems(input, { userAudience: config.JWT_AUDIENCE, adminAudience: config.adminAudience })
    if (found.length > 0) throw new ValidationFailedError(found)
    const id = randomBytes(16).toString('hex')
    const authMethod: TokenEndpointAuthMethod = input.trust !== undefined ? 'none' : input.jwks === undefined ? 'client_secret_basic' : 'private_key_jwt'
    const secret = authMethod === 'client_secret_basic' ? newSecret() : null
    // Forgotten here too: an id asked for before it existed is not kept unknown (every other
    // replica hears of the insert).
    const row = await changing(id, () => db.transaction().execute(async (trx) => {
      const created = await trx.insertInto('oauth_clients').values({
        id,
        name: input.name.trim(),
        scopes: textArray(input.scopes),
        audiences: textArray(input.audiences),
        token_ttl_s: input.tokenTtlS ?? CLIENT_TOKEN_TTL_S.default,
        token_endpoint_auth_method: authMethod,
        jwks: input.jwks === undefined ? null : JSON.stringify({ keys: input.jwks.keys }),
        exchange_audiences: textArray(input.exchangeAudiences ?? []),
        trusted_issuer: input.trust?.issuer ?? null,
        trusted_jwks_uri: input.trust?.jwksUri ?? null,
        trusted_subjects: input.trust === undefined ? null : textArray(input.trust.subjects),
        trusted_alg: input.trust?.alg ?? null,
        created_at: clock.db()
      }).returning(COLUMNS).executeTakeFirstOrThrow()
      if (secret !== null) await trx.insertInto('oauth_client_secrets').values({ id: randomUUID(), client_id: id, secret_hash: hashOf(secret), created_at: clock.db() }).execute()
      return created
    }))
    audit.record({
      event: 'client_created',
      detail: { client_id: id, name: row.name, ...policyOf(toClient(row)), token_endpoint_auth_method: authMethod, private_key_jwt: row.jwks !== null }
    }, caller)
    return { client: toClient(row), secret }
  }

  /**
   * Changes a client's policy (ClientChanges): the lists given replace its own. Every replica
   * forgets the client at once (the notification), so each token check and exchange from then on
   * is judged by the new policy: a scope or audience taken away is refused in the tokens already out.
   */
  async function update (id: string, changes: ClientChanges, caller?: Caller): Promise<ServiceClient> {
    await stored(id)
    // Read and written with the row locked: two updates at once, one after the other, neither
    // bringing back what the other took away.
    const { before, after } = await changing(id, () => db.transaction().execute(async (trx) => {
      const client = toClient(await trx.selectFrom('oauth_clients').select(COLUMNS).where('id', '=', id).forUpdate().executeTakeFirstOrThrow())
      if (changes.subjects !== undefined && client.trust === null) throw new ValidationFailedError([{ field: 'subject', message: `${id} trusts no issuer: it has no subjects` }])
      const next: NewClient = {
        name: client.name,
        scopes: changes.scopes ?? client.scopes,
        audiences: changes.audiences ?? client.audiences,
        exchangeAudiences: changes.exchangeAudiences ?? client.exchangeAudiences,
        tokenTtlS: changes.tokenTtlS ?? client.tokenTtlS,
        ...(client.trust === null ? {} : { trust: { ...client.trust, subjects: changes.subjects ?? client.trust.subjects } }),
        ...(client.jwks === null ? {} : { jwks: client.jwks })
      }
      const found = problems(next, { userAudience: config.JWT_AUDIENCE, adminAudience: config.adminAudience })
      if (found.length > 0) throw new ValidationFailedError(found)
      const row = await trx.updateTable('oauth_clients')
        .set({
          scopes: textArray(next.scopes),
          audiences: textArray(next.audiences),
          exchange_audiences: textArray(next.exchangeAudiences ?? []),
          token_ttl_s: next.tokenTtlS!,
          ...(next.trust === undefined ? {} : { trusted_subjects: textArray(next.trust.subjects) })
        })
        .where('id', '=', id)
        .returning(COLUMNS)
        .executeTakeFirstOrThrow()
      return { before: client, after: toClient(row) }
    }))
    audit.record({ event: 'client_updated', detail: { client_id: id, before: policyOf(before), after: policyOf(after) } }, caller)
    return after
  }

  /**
   * What a token of the client for `request` would be for: the scopes asked (all it holds when
   * none are) and its one audience; the refusal otherwise. Judged before anything is spent (a
   * workload's assertion): a request refused here can be made again, rightly.
   */
  function issuable (client: ServiceClient, request: { scope?: string, audience?: string }): { asked: string[], audience: string } {
    if (client.configured === true) throw new UnauthorizedClientError('This client is configured for introspection only (INTROSPECTION_CLIENTS).')
    const asked = request.scope === undefined ? client.scopes : scopesOf(request.scope)
    const refused = asked.filter((scope) => !client.scopes.includes(scope))
    if (refused.length > 0) throw new InvalidScopeError(`The client does not hold ${refused.map((s) => JSON.stringify(s)).join(', ')}.`)
    let audience = request.audience
    if (audience === undefined) {
      if (client.audiences.length !== 1) throw new InvalidTargetError(`This client has several audiences: name one (resource or audience): ${client.audiences.join(', ')}.`)
      audience = client.audiences[0]!
    } else if (!client.audiences.includes(audience)) {
      throw new InvalidTargetError(`The client may not have tokens for ${JSON.stringify(audience)}.`)
    }
    return { asked, audience }
  }

  return {
    create,
    update,
    spend,
    issuable,
    assertionAudiences,

    /** An enabled or disabled client by id, as a token check or an exchange judges it: configured, cached or read. */
    async find (id: string): Promise<ServiceClient | undefined> {
      return (await lookup(id))?.client
    },

    async list (): Promise<ServiceClient[]> {
      return (await db.selectFrom('oauth_clients').select(COLUMNS).orderBy('created_at').orderBy('id').execute()).map(toClient)
    },

    /** A client of the database, and when each of its working secrets was made and stops working. */
    async show (id: string): Promise<{ client: ServiceClient, secrets: Array<{ createdAt: Date, expiresAt: Date | null }> }> {
      const client = await stored(id)
      const secrets = await db.selectFrom('oauth_client_secrets').select(['created_at', 'expires_at'])
        .where('client_id', '=', id)
        .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', clock.db())]))
        .orderBy('created_at').execute()
      return { client, secrets: secrets.map((s) => ({ createdAt: s.created_at, expiresAt: s.expires_at })) }
    },

    /**
     * A new secret for the client, shown this once. The one it replaces works `graceS` more (0:
     * not at all), so the services holding it can move over without downtime; one in its grace
     * already goes now: never more than two work at once.
     */
    async rotateSecret (id: string, graceS: number, caller?: Caller): Promise<{ secret: string, previousExpiresAt: Date | null }> {
      if (!Number.isInteger(graceS) || graceS < 0 || graceS > MAX_SECRET_GRACE_S) throw new ValidationFailedError([{ field: 'grace', message: `0 to ${MAX_SECRET_GRACE_S} seconds` }])
      const client = await stored(id)
      if (client.authMethod !== 'client_secret_basic') {
        const way = client.trust === null ? 'authenticates with private_key_jwt' : `is a workload client (the JWT bearer grant, with a token of ${client.trust.issuer})`
        throw new ValidationFailedError([{ field: 'client', message: `${id} ${way}: it has no secret, and is given none` }])
      }
      const secret = newSecret()
      const previousExpiresAt = await changing(id, () => db.transaction().execute(async (trx) => {
        // Two rotations at once: one after the other.
        await trx.selectFrom('oauth_clients').select('id').where('id', '=', id).forUpdate().executeTakeFirstOrThrow()
        await trx.deleteFrom('oauth_client_secrets').where('client_id', '=', id).where('expires_at', 'is not', null).execute()
        const replaced = await trx.updateTable('oauth_client_secrets')
          .set({ expires_at: sql<Date>`${clock.db()} + ${seconds(graceS)}` })
          .where('client_id', '=', id)
          .returning('expires_at')
          .executeTakeFirst()
        await trx.insertInto('oauth_client_secrets').values({ id: randomUUID(), client_id: id, secret_hash: hashOf(secret), created_at: clock.db() }).execute()
        return replaced?.expires_at ?? null
      }))
      audit.record({ event: 'client_secret_rotated', detail: { client_id: id, grace_s: graceS } }, caller)
      return { secret, previousExpiresAt }
    },

    disable: (id: string, caller?: Caller) => setDisabled(id, true, caller),
    enable: (id: string, caller?: Caller) => setDisabled(id, false, caller),

    /**
     * The enabled client the credentials prove, by the method it is registered for;
     * InvalidClientError otherwise, saying why (CLIENT_REFUSALS): an unknown client and a wrong
     * secret alike. A secret is compared with every working one (an unknown client's with a
     * stand-in), so the time tells nothing either; an assertion is verified with the client's own
     * keys, for the token endpoint or the issuer, and its jti spent once across replicas.
     */
    async authenticate (credentials: ClientCredentials): Promise<ServiceClient> {
      if (credentials.method === 'private_key_jwt') return await verifyAssertion(credentials.assertion, credentials.id)
      const record = await lookup(credentials.id)
      // A key client has no secret (migration 0013 deleted any it had), nor a workload client: which way it takes is no secret.
      if (record?.client.authMethod === 'private_key_jwt') throw refuse(CLIENT_REFUSALS.secretOfKeyClient)
      if (record?.client.authMethod === 'none') throw refuse(CLIENT_REFUSALS.workload)
      const given = hashOf(credentials.secret)
      const now = clock.now().getTime()
      let matches = false
      for (const { hash, expiresAt } of record?.secrets ?? NO_SECRET) {
        if (safeEqual(given, hash) && (expiresAt === null || expiresAt > now)) matches = true
      }
      if (record === undefined || !matches) throw refuse(CLIENT_REFUSALS.secret)
      if (record.client.disabled) throw refuse(CLIENT_REFUSALS.disabled)
      return record.client
    },

    /**
     * Whether introspection may answer `active` to this client for a token of `audience` (issue
     * 26, docs/service-to-service.md): a token addressed to it (one of its audiences: a token's
     * aud is never a client id); users' tokens (JWT_AUDIENCE) to a client holding introspect:users
     * (INTROSPECTION_CLIENTS do); any token to one holding introspect:all. Many resource servers
     * (Authlib's among them) take `active` without checking `aud` themselves.
     */
    mayIntrospect (client: ServiceClient, audience: string): boolean {
      if (client.scopes.includes(INTROSPECT_ALL_SCOPE) || client.audiences.includes(audience)) return true
      return audience === config.JWT_AUDIENCE && client.scopes.includes(INTROSPECT_USERS_SCOPE)
    },

    /**
     * The client's access token (RFC 9068) for the scopes asked (all it holds when none are)
     * and one of its audiences (RFC 8707's `resource`, or `audience`; needed when it has
     * several): one signature, nothing written.
     */
    issue (client: ServiceClient, request: { scope?: string, audience?: string }): IssuedToken {
      const { asked, audience } = issuable(client, request)
      const iat = Math.floor(clock.now().getTime() / 1000)
      const scope = asked.join(' ')
      const token = keyring.signService({
        token_type: 'access', gty: SERVICE_GRANT, sub: client.id, client_id: client.id, aud: audience, scope, jti: randomUUID(), iat, exp: iat + client.tokenTtlS
      })
      onIssue?.()
      return { access_token: token, token_type: 'Bearer', expires_in: client.tokenTtlS, scope }
    },

    /**
     * The client of a verified service token, if the token still holds: the client enabled and
     * the audience still one of its own; with the scopes of the token it still holds.
     */
    async liveClient (claims: ServiceClaims): Promise<{ client: ServiceClient, scopes: string[] } | undefined> {
      const record = await lookup(claims.client_id)
      if (record === undefined || record.client.disabled || !record.client.audiences.includes(claims.aud)) return undefined
      return { client: record.client, scopes: scopesOf(claims.scope).filter((scope) => record.client.scopes.includes(scope)) }
    }
  }
}

export type Clients = ReturnType<typeof createClients>
