import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto'
import { sql, type Kysely, type Transaction } from 'kysely'
import type { Algorithm, Config } from '../../config.ts'
import { lockKey } from '../../db/locks.ts'
import type { Database, SigningKeyRow } from '../../db/types.ts'
import type { Clock } from '../../lib/clock.ts'
import { SecretBox } from '../../lib/secret-box.ts'
import type { Jwk } from '../../schemas.ts'
import type { AuditTrail } from '../audit.ts'

export interface SigningKey {
  kid: string
  alg: Algorithm
  /** The signing key as fast-jwt takes it: a private PEM, or the shared secret for HS256. */
  privateKey: string
  /** The verification key: a public PEM, or the shared secret for HS256. */
  verifyKey: string
  /** Public JWK for the JWKS; null for HS256, whose key is never published. */
  publicJwk: Jwk | null
  createdAt: Date
  retiredAt: Date | null
  /** Published in the JWKS, not signing yet. */
  next: boolean
}

function generate (alg: Algorithm): { privatePem: string, publicJwk: Record<string, unknown> | null } {
  if (alg === 'HS256') {
    return { privatePem: randomBytes(32).toString('base64url'), publicJwk: null }
  }
  const pair = alg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : alg === 'EdDSA'
      ? generateKeyPairSync('ed25519')
      : generateKeyPairSync('rsa', { modulusLength: 2048 })
  return {
    privatePem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicJwk: pair.publicKey.export({ format: 'jwk' }) as Record<string, unknown>
  }
}

function fromRow (row: SigningKeyRow, box: SecretBox): SigningKey {
  const privateKey = box.open(row.private_key_enc, row.kid)
  const alg = row.alg as Algorithm
  return {
    kid: row.kid,
    alg,
    privateKey,
    verifyKey: alg === 'HS256' ? privateKey : createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString(),
    publicJwk: row.public_jwk === null ? null : { ...row.public_jwk as Omit<Jwk, 'kid' | 'alg' | 'use'>, kid: row.kid, alg, use: 'sig' },
    createdAt: row.created_at,
    retiredAt: row.retired_at,
    next: row.next
  }
}

// RFC 7638 §3.2: the required members of each key type, in lexicographic order.
const THUMBPRINT_MEMBERS: Record<string, string[]> = { EC: ['crv', 'kty', 'x', 'y'], OKP: ['crv', 'kty', 'x'], RSA: ['e', 'kty', 'n'] }

/**
 * The signing key an operator gives as a PEM (JWT_PRIVATE_KEY), its kid the RFC 7638 thumbprint
 * of its public half: the same key gets the same kid on every replica and every start.
 */
export function keyFromPem (pem: string, alg: Exclude<Algorithm, 'HS256'>): SigningKey {
  const publicKey = createPublicKey(pem)
  const jwk = publicKey.export({ format: 'jwk' }) as Record<string, string>
  const members = THUMBPRINT_MEMBERS[jwk.kty ?? ''] ?? []
  const kid = createHash('sha256').update(JSON.stringify(Object.fromEntries(members.map((m) => [m, jwk[m]])))).digest('base64url')
  return {
    kid,
    alg,
    privateKey: createPrivateKey(pem).export({ type: 'pkcs8', format: 'pem' }).toString(),
    verifyKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    publicJwk: { ...jwk as Omit<Jwk, 'kid' | 'alg' | 'use'>, kid, alg, use: 'sig' },
    createdAt: new Date(0),
    retiredAt: null,
    next: false
  }
}

type Trx = Transaction<Database>

// Every change of keys holds this lock for its transaction: replicas that start together
// create one key, not one each, and a rotation never races a start.
async function withKeysLocked<T> (db: Kysely<Database>, work: (trx: Trx) => Promise<T>): Promise<T> {
  return await db.transaction().execute(async (trx) => {
    await sql`select pg_advisory_xact_lock(${lockKey('signingKeys')})`.execute(trx)
    return await work(trx)
  })
}

async function insertKey (trx: Trx, box: SecretBox, alg: Algorithm, next: boolean, now: Date): Promise<string> {
  const { privatePem, publicJwk } = generate(alg)
  const kid = randomUUID()
  await trx.insertInto('signing_keys').values({
    kid,
    alg,
    // An explicit cast: pg and PGlite serialise a bare parameter for jsonb differently.
    public_jwk: publicJwk === null ? null : sql<Record<string, unknown>>`cast(${JSON.stringify(publicJwk)} as jsonb)`,
    private_key_enc: box.seal(privatePem, kid),
    created_at: now,
    retired_at: null,
    next
  }).execute()
  return kid
}

// The other keys that still sign or wait to: retired, not deleted, so they keep verifying the
// tokens they signed until those expire.
async function retireAllBut (trx: Trx, kid: string, now: Date): Promise<void> {
  await trx.updateTable('signing_keys').set({ retired_at: now, next: false }).where('retired_at', 'is', null).where('kid', '<>', kid).execute()
}

/**
 * Makes sure a key of `alg` signs: the newest active one, or a new one when there is none
 * (first start) or JWT_ALGORITHM changed. Its kid.
 */
export async function ensureSigningKey (db: Kysely<Database>, box: SecretBox, alg: Algorithm, now = new Date()): Promise<string> {
  return await withKeysLocked(db, async (trx) => {
    const current = await trx.selectFrom('signing_keys')
      .select(['kid', 'alg'])
      .where('retired_at', 'is', null)
      .where('next', '=', false)
      .orderBy('created_at', 'desc')
      .executeTakeFirst()
    if (current !== undefined && current.alg === alg) return current.kid
    const kid = await insertKey(trx, box, alg, false, now)
    await retireAllBut(trx, kid, now)
    return kid
  })
}

export interface Rotation { kid: string, promoted: boolean }

/**
 * keys:rotate. With `next`, publishes a key of `alg` that does not sign yet (or names the one
 * already published). Without, makes the published next key the signer, or a new key when none
 * waits, and retires the others.
 */
export async function rotateSigningKey (db: Kysely<Database>, box: SecretBox, alg: Algorithm, { next = false, now = new Date() } = {}): Promise<Rotation> {
  return await withKeysLocked(db, async (trx) => {
    const waiting = await trx.selectFrom('signing_keys').select('kid')
      .where('retired_at', 'is', null).where('next', '=', true).where('alg', '=', alg)
      .orderBy('created_at', 'desc').executeTakeFirst()
    if (next) return { kid: waiting?.kid ?? await insertKey(trx, box, alg, true, now), promoted: false }
    if (waiting !== undefined) {
      // Signs from now on: the one active key that is not next.
      await trx.updateTable('signing_keys').set({ next: false }).where('kid', '=', waiting.kid).execute()
      await retireAllBut(trx, waiting.kid, now)
      return { kid: waiting.kid, promoted: true }
    }
    const kid = await insertKey(trx, box, alg, false, now)
    await retireAllBut(trx, kid, now)
    return { kid, promoted: false }
  })
}

/** Keys that can still verify a live token or soon will: the active and next ones, and those retired less than `keepRetiredS` ago. */
export async function loadSigningKeys (db: Kysely<Database>, box: SecretBox, keepRetiredS: number, now = new Date()): Promise<SigningKey[]> {
  const rows = await db.selectFrom('signing_keys')
    .selectAll()
    .where((eb) => eb.or([
      eb('retired_at', 'is', null),
      eb('retired_at', '>', new Date(now.getTime() - keepRetiredS * 1000))
    ]))
    .orderBy('created_at', 'desc')
    .execute()
  return rows.map((row) => fromRow(row, box))
}

/** How often each replica reloads the keys, should the notification of a change be lost. */
export const KEYS_RELOAD_INTERVAL_S = 60
// Replica clocks may disagree by this much.
const CLOCK_SKEW_S = 30

export interface SigningKeysDeps {
  db: Kysely<Database>
  config: Pick<Config, 'SECRET_KEY' | 'JWT_ALGORITHM' | 'JWT_PRIVATE_KEY' | 'accessTtlS'>
  clock: Clock
  audit: AuditTrail
}

/**
 * The signing keys as a service: the table's (encrypted under SECRET_KEY), or the operator's PEM
 * (JWT_PRIVATE_KEY), which then replaces them.
 */
export function createSigningKeys ({ db, config, clock, audit }: SigningKeysDeps) {
  const box = new SecretBox(config.SECRET_KEY, 'signing-keys')
  const alg = config.JWT_ALGORITHM
  // parseConfig checked that the PEM fits JWT_ALGORITHM.
  const pem = config.JWT_PRIVATE_KEY === undefined ? undefined : keyFromPem(config.JWT_PRIVATE_KEY, alg as Exclude<Algorithm, 'HS256'>)
  // A retired key verifies until the last access token it signed has expired (refresh tokens
  // are signed with a key of their own), counting a replica that did not hear of the rotation
  // and kept signing with it until its next reload.
  const keepRetiredS = config.accessTtlS + KEYS_RELOAD_INTERVAL_S + CLOCK_SKEW_S
  return {
    /** Makes sure a key of JWT_ALGORITHM signs: the first start makes one, a changed algorithm another. */
    async ensure (): Promise<void> {
      if (pem === undefined) await ensureSigningKey(db, box, alg, clock.now())
    },

    /** The keys that sign or verify now, newest first. */
    async load (): Promise<SigningKey[]> {
      return pem === undefined ? await loadSigningKeys(db, box, keepRetiredS, clock.now()) : [pem]
    },

    /** keys:rotate (see rotateSigningKey), in the audit trail. */
    async rotate ({ next = false } = {}): Promise<Rotation> {
      if (pem !== undefined) throw new Error('the signing key comes from JWT_PRIVATE_KEY: rotate it there')
      const rotation = await rotateSigningKey(db, box, alg, { next, now: clock.now() })
      audit.record({ event: 'key_rotated', detail: { kid: rotation.kid, alg, next, promoted: rotation.promoted } })
      return rotation
    }
  }
}

export type SigningKeys = ReturnType<typeof createSigningKeys>
