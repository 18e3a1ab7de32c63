import { createPublicKey, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto'
import { sql, type Kysely } from 'kysely'
import type { Algorithm } from '../config.ts'
import type { Database, SigningKeyRow } from '../db/types.ts'
import type { SecretBox } from '../lib/secret-box.ts'
import type { Jwk } from '../schemas.ts'

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
    retiredAt: row.retired_at
  }
}

/**
 * Makes the newest active key one of `alg`, generating it when there is none (first start, or
 * JWT_ALGORITHM changed) or when `rotate` is set. Older active keys are retired, not deleted:
 * they keep verifying the tokens they signed. An advisory lock held for the transaction makes
 * replicas that start together create one key, not one each.
 */
export async function ensureSigningKey (
  db: Kysely<Database>,
  box: SecretBox,
  alg: Algorithm,
  { rotate = false, now = new Date() }: { rotate?: boolean, now?: Date } = {}
): Promise<string> {
  return await db.transaction().execute(async (trx) => {
    await sql`select pg_advisory_xact_lock(hashtext('authgate.signing_keys'))`.execute(trx)
    const current = await trx.selectFrom('signing_keys')
      .select(['kid', 'alg'])
      .where('retired_at', 'is', null)
      .orderBy('created_at', 'desc')
      .executeTakeFirst()
    if (current !== undefined && current.alg === alg && !rotate) return current.kid

    const { privatePem, publicJwk } = generate(alg)
    const kid = randomUUID()
    await trx.updateTable('signing_keys').set({ retired_at: now }).where('retired_at', 'is', null).execute()
    await trx.insertInto('signing_keys').values({
      kid,
      alg,
      // An explicit cast: pg and PGlite serialise a bare parameter for jsonb differently.
      public_jwk: publicJwk === null ? null : sql<Record<string, unknown>>`cast(${JSON.stringify(publicJwk)} as jsonb)`,
      private_key_enc: box.seal(privatePem, kid),
      created_at: now,
      retired_at: null
    }).execute()
    return kid
  })
}

/** Keys that can still verify a live token: the active ones, and those retired less than `keepRetiredS` ago. */
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
