import { createHash, createPublicKey, randomBytes, randomUUID, type JsonWebKey } from 'node:crypto'
import { createDecoder, createVerifier, type Algorithm } from 'fast-jwt'
import { sql } from 'kysely'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import {
  ClientNotFoundError, InsufficientScopeError, InvalidClientError, InvalidScopeError, InvalidTargetError, UnauthorizedClientError, ValidationFailedError,
  type FieldError
} from '../errors.ts'
import { seconds, type Clock } from '../lib/clock.ts'
import { safeEqual } from '../lib/constant-time.ts'
import type { NotifiedCache } from '../lib/notified-cache.ts'
import type { AuditTrail, Caller } from './audit.ts'
import { SERVICE_GRANT, type ServiceClaims } from './claims.ts'
import type { Keyring } from './keyring.ts'

/** A public JWKS a client signs its assertions with (private_key_jwt). */
export interface ClientJwks { keys: JsonWebKey[] }

/** A service identity (OAuth 2.0 client credentials). */
export interface ServiceClient {
  id: string
  name: string
  /** What its tokens may carry. */
  scopes: string[]
  /** What its tokens may be for: each token names one. */
  audiences: string[]
  tokenTtlS: number
  /** For private_key_jwt (RFC 7523). */
  jwks: ClientJwks | null
  disabled: boolean
  createdAt: Date
  /** One of INTROSPECTION_CLIENTS: configured, not in the database, for introspection only. */
  configured?: true
}

/** A client and its secrets' hashes, as authentication needs it; each secret works until `expiresAt` (ms) if set. */
export interface ClientRecord { client: ServiceClient, secrets: Array<{ hash: string, expiresAt: number | null }> }

export interface NewClient {
  name: string
  scopes: string[]
  audiences: string[]
  tokenTtlS?: number
  jwks?: ClientJwks
}

/** How a client proves itself (RFC 6749 §2.3.1, RFC 7523 §2.2): src/lib/client-credentials.ts reads it from a request. */
export type ClientCredentials =
  | { method: 'client_secret_basic' | 'client_secret_post', id: string, secret: string }
  | { method: 'private_key_jwt', assertion: string, /** client_id, when the request names it too. */ id?: string }

/** A service access token as the token endpoint answers it (RFC 6749 §5.1). */
export interface IssuedToken { access_token: string, token_type: 'Bearer', expires_in: number, scope: string }

export interface ClientsDeps {
  db: Db
  clock: Clock
  keyring: Keyring
  config: Pick<Config, 'JWT_AUDIENCE' | 'JWT_ISSUER' | 'introspectionClients'>
  audit: AuditTrail
  /** Clients as they were read, kept true by notifications (PostgreSQL); none: each lookup reads them. */
  cache?: NotifiedCache<ClientRecord>
  /** Hears of each token issued (metrics). */
  onIssue?: () => void
}

/** The default lifetime of a client's tokens, and the longest: never unlimited. */
export const CLIENT_TOKEN_TTL_S = { default: 600, max: 86_400 } as const
/** authgate's own scopes: introspection (RFC 7662) for the clients holding it. */
export const INTROSPECT_SCOPE = 'introspect'
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
// An assertion lives a few minutes at most: its jti is kept (single use) until it expires.
const ASSERTION_MAX_LIFETIME_S = 300
// A client's clock may run this far from ours (fast-jwt counts it in milliseconds).
const ASSERTION_SKEW_MS = 30_000
// RFC 6749 §3.3: a scope token is visible ASCII but " and \.
const SCOPE = /^[\x21\x23-\x5b\x5d-\x7e]{1,128}$/
// Client ids of the database: 128 random bits, hex.
const CLIENT_ID = /^[0-9a-f]{32}$/

const hashOf = (secret: string): string => createHash('sha256').update(secret).digest('base64url')
// The stand-in an unknown client's secret is compared with: the same work as a known one's.
const NO_SECRET = [{ hash: hashOf('authgate: no such client'), expiresAt: null }]
const decode = createDecoder({ complete: true })

/** The scopes of an RFC 6749 §3.3 scope parameter: space-separated, each once. */
export function scopesOf (parameter: string | undefined): string[] {
  return [...new Set((parameter ?? '').split(' ').filter(Boolean))]
}

/** Why a client's definition is refused, field by field. */
function problems (client: NewClient, userAudience: string): FieldError[] {
  const found: FieldError[] = []
  if (client.name.trim() === '' || client.name.length > 200) found.push({ field: 'name', message: 'must be 1 to 200 characters' })
  if (client.scopes.length > 100) found.push({ field: 'scope', message: 'at most 100' })
  for (const scope of client.scopes) if (!SCOPE.test(scope)) found.push({ field: 'scope', message: `${JSON.stringify(scope)} is not a scope (RFC 6749 §3.3: visible ASCII but " and \\, no space)` })
  if (client.audiences.length === 0 || client.audiences.length > 20) found.push({ field: 'audience', message: 'one to 20' })
  for (const audience of client.audiences) {
    // RFC 8707 §2: an absolute URI without a fragment; the users' audience is theirs alone.
    if (!URL.canParse(audience) || audience.includes('#') || audience.length > 512) found.push({ field: 'audience', message: `${JSON.stringify(audience)} is not an absolute URI without a fragment` })
    else if (audience === userAudience) found.push({ field: 'audience', message: `${JSON.stringify(audience)} is the audience of users' tokens (JWT_AUDIENCE)` })
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

type ClientRow = { id: string, name: string, scopes: string[], audiences: string[], token_ttl_s: number, jwks: ClientJwks | null, disabled_at: Date | null, created_at: Date }
const COLUMNS = ['id', 'name', 'scopes', 'audiences', 'token_ttl_s', 'jwks', 'disabled_at', 'created_at'] as const
const toClient = (row: ClientRow): ServiceClient => ({
  id: row.id,
  name: row.name,
  scopes: row.scopes,
  audiences: row.audiences,
  tokenTtlS: row.token_ttl_s,
  jwks: row.jwks,
  disabled: row.disabled_at !== null,
  createdAt: row.created_at
})

/**
 * Service identities: OAuth 2.0 clients with the scopes and audiences they may ask for, up to
 * two working secrets (SHA-256 of 256 random bits, compared in constant time: nothing to
 * stretch, so nothing to collapse under load) or a JWKS for private_key_jwt; and their tokens
 * (RFC 9068), one signature each, no row written. Every change of a client is audited; every
 * replica hears of it (migration 0008's trigger) and forgets what it kept.
 */
export function createClients ({ db, clock, keyring, config, audit, cache, onIssue }: ClientsDeps) {
  // INTROSPECTION_CLIENTS: clients of the configuration, holding the introspection scope only.
  const configured = new Map([...config.introspectionClients].map(([id, secret]): [string, ClientRecord] => [id, {
    client: { id, name: 'INTROSPECTION_CLIENTS', scopes: [INTROSPECT_SCOPE], audiences: [], tokenTtlS: CLIENT_TOKEN_TTL_S.default, jwks: null, disabled: false, createdAt: new Date(0), configured: true },
    secrets: [{ hash: hashOf(secret), expiresAt: null }]
  }]))
  // RFC 7523 §3: the assertion's audience is the token endpoint, or (RFC 7523bis) the issuer.
  const assertionAudiences = [config.JWT_ISSUER, `${config.JWT_ISSUER.replace(/\/$/, '')}/oauth/token`]

  // One statement: the client and its secrets that still work.
  async function read (id: string): Promise<ClientRecord | undefined> {
    if (!CLIENT_ID.test(id)) return undefined
    const row = await db.selectFrom('oauth_clients as c').select(COLUMNS.map((c) => `c.${c}` as const))
      .select((eb) => eb.selectFrom('oauth_client_secrets as s')
        .select(sql<Array<{ hash: string, expiresAt: number | null }>>`coalesce(json_agg(json_build_object('hash', s.secret_hash, 'expiresAt', cast(extract(epoch from s.expires_at) * 1000 as bigint))), '[]')`.as('secrets'))
        .whereRef('s.client_id', '=', 'c.id')
        .where((w) => w.or([w('s.expires_at', 'is', null), w('s.expires_at', '>', clock.db())]))
        .as('secrets'))
      .where('c.id', '=', id)
      .executeTakeFirst()
    if (row === undefined) return undefined
    return { client: toClient(row), secrets: (row.secrets ?? []).map((s) => ({ hash: s.hash, expiresAt: s.expiresAt === null ? null : Number(s.expiresAt) })) }
  }

  /** A client and its working secrets: configured, else from the cache while it may be trusted, else read. */
  async function lookup (id: string): Promise<ClientRecord | undefined> {
    const fixed = configured.get(id)
    if (fixed !== undefined) return fixed
    if (cache === undefined) return await read(id)
    const cached = cache.get(id)
    if (cached !== undefined) return cached
    const generation = cache.generation
    const record = await read(id)
    if (record !== undefined) cache.set(id, record, generation)
    return record
  }

  /** A client of the database by id, for a command to change; NotFoundError when there is none. */
  async function stored (id: string): Promise<ServiceClient> {
    const record = configured.has(id) ? undefined : await read(id)
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

  async function verifyAssertion (assertion: string, named: string | undefined): Promise<ServiceClient> {
    let header: Record<string, unknown>, payload: Record<string, unknown>
    try {
      ({ header, payload } = decode(assertion) as { header: Record<string, unknown>, payload: Record<string, unknown> })
    } catch {
      throw new InvalidClientError()
    }
    const id = payload.sub
    if (typeof id !== 'string' || (named !== undefined && named !== id) || typeof payload.jti !== 'string' || payload.jti.length > 256 || typeof payload.exp !== 'number') throw new InvalidClientError()
    const record = await lookup(id)
    const jwks = record?.client.jwks
    if (record === undefined || record.client.disabled || jwks == null) throw new InvalidClientError()
    const now = clock.now().getTime()
    if (payload.exp * 1000 - now > ASSERTION_MAX_LIFETIME_S * 1000) throw new InvalidClientError()
    // The key the header names, else each in turn; never one the header carries.
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
    if (!verified) throw new InvalidClientError()
    // Used once across replicas: the primary key decides which of two presentations is first.
    const spent = await db.insertInto('oauth_client_assertions')
      .values({ client_id: id, jti: payload.jti, expires_at: new Date(payload.exp * 1000 + ASSERTION_SKEW_MS) })
      .onConflict((oc) => oc.doNothing())
      .executeTakeFirst()
    if (Number(spent.numInsertedOrUpdatedRows ?? 0n) !== 1) throw new InvalidClientError()
    return record.client
  }

  return {
    /** A new client and its first secret, shown this once. */
    async create (input: NewClient, caller?: Caller): Promise<{ client: ServiceClient, secret: string }> {
      const found = problems(input, config.JWT_AUDIENCE)
      if (found.length > 0) throw new ValidationFailedError(found)
      const id = randomBytes(16).toString('hex')
      const secret = newSecret()
      const row = await db.transaction().execute(async (trx) => {
        const created = await trx.insertInto('oauth_clients').values({
          id,
          name: input.name.trim(),
          scopes: sql<string[]>`cast(${[...new Set(input.scopes)]} as text[])`,
          audiences: sql<string[]>`cast(${[...new Set(input.audiences)]} as text[])`,
          token_ttl_s: input.tokenTtlS ?? CLIENT_TOKEN_TTL_S.default,
          jwks: input.jwks === undefined ? null : JSON.stringify({ keys: input.jwks.keys }),
          created_at: clock.db()
        }).returning(COLUMNS).executeTakeFirstOrThrow()
        await trx.insertInto('oauth_client_secrets').values({ id: randomUUID(), client_id: id, secret_hash: hashOf(secret), created_at: clock.db() }).execute()
        return created
      })
      audit.record({ event: 'client_created', detail: { client_id: id, name: row.name, scopes: row.scopes, audiences: row.audiences, token_ttl_s: row.token_ttl_s, private_key_jwt: row.jwks !== null } }, caller)
      return { client: toClient(row), secret }
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
      await stored(id)
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
     * The enabled client the credentials prove; InvalidClientError otherwise, for every cause
     * alike. A secret is compared with every working one (an unknown client's with a stand-in),
     * so the time tells nothing; an assertion is verified with the client's own keys, for the
     * token endpoint or the issuer, and its jti spent once across replicas.
     */
    async authenticate (credentials: ClientCredentials): Promise<ServiceClient> {
      if (credentials.method === 'private_key_jwt') return await verifyAssertion(credentials.assertion, credentials.id)
      const record = await lookup(credentials.id)
      const given = hashOf(credentials.secret)
      const now = clock.now().getTime()
      let matches = false
      for (const { hash, expiresAt } of record?.secrets ?? NO_SECRET) {
        if (safeEqual(given, hash) && (expiresAt === null || expiresAt > now)) matches = true
      }
      if (record === undefined || record.client.disabled || !matches) throw new InvalidClientError()
      return record.client
    },

    /** A 403 unless the client holds `scope`. */
    requireScope (client: ServiceClient, scope: string): void {
      if (!client.scopes.includes(scope)) throw new InsufficientScopeError(scope)
    },

    /**
     * The client's access token (RFC 9068) for the scopes asked (all it holds when none are)
     * and one of its audiences (RFC 8707's `resource`, or `audience`; needed when it has
     * several): one signature, nothing written.
     */
    issue (client: ServiceClient, request: { scope?: string, audience?: string }): IssuedToken {
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
