import { randomUUID } from 'node:crypto'
import { generateSecret, generateURI, verifySync } from 'otplib'
import type { Config } from '../../config.ts'
import type { Db, Executor } from '../../db/index.ts'
import { epochSeconds, type Clock } from '../../lib/clock.ts'
import { SecretBox } from '../../lib/secret-box.ts'

// RFC 6238's defaults, as every authenticator app reads an otpauth URI: SHA-1, 6 digits, 30 s;
// a code of the step before or after is taken too (clock drift), each step at most once.
const STEP_S = 30

/** What a code was, once judged: the one taken, a wrong one, or a right one used already (not a guess). */
export type Judged = 'right' | 'wrong' | 'used'

/** A second factor as its user sees it. */
export interface FactorInfo { id: string, kind: 'totp', created_at: Date, verified: boolean }

export interface TotpDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'SECRET_KEY' | 'TOTP_ISSUER'>
}

/**
 * TOTP factors (RFC 6238, `mfa_factors`): the secret sealed under SECRET_KEY, the last accepted
 * time step stored, so a code is taken once (two parallel verifies of one code: one success).
 */
export function createTotp ({ db, clock, config }: TotpDeps) {
  const box = new SecretBox(config.SECRET_KEY, 'mfa-secrets')

  const verifiedFactors = (userId: number, executor: Executor = db) => executor.selectFrom('mfa_factors').select(['id', 'secret_sealed'])
    .where('user_id', '=', userId).where('verified_at', 'is not', null)

  // Takes a TOTP code of one of `factors` once: the time step it matched is stored by a guarded
  // UPDATE, which a second use of the code (or of an older one) finds already past: `used`.
  async function take (factors: Array<{ id: string, secret_sealed: string }>, code: string, executor: Executor = db): Promise<Judged> {
    if (!/^[0-9]{6}$/.test(code)) return 'wrong'
    const now = epochSeconds(clock.now())
    let used = false
    for (const factor of factors) {
      const result = verifySync({ secret: box.open(factor.secret_sealed, factor.id), token: code, epoch: now, epochTolerance: STEP_S })
      if (!result.valid) continue
      const step = Math.floor(now / STEP_S) + result.delta
      const taken = await executor.updateTable('mfa_factors').set({ last_step: step })
        .where('id', '=', factor.id)
        .where((eb) => eb.or([eb('last_step', 'is', null), eb('last_step', '<', String(step))]))
        .executeTakeFirst()
      if (taken.numUpdatedRows === 1n) return 'right'
      used = true
    }
    return used ? 'used' : 'wrong'
  }

  return {
    /** Takes a code of one of the user's verified factors once, within `executor`. */
    takeVerified: async (userId: number, code: string, executor: Executor): Promise<Judged> => await take(await verifiedFactors(userId, executor).execute(), code, executor),

    /** A new unverified factor of the user, an earlier unverified one dropped: its id, its secret (base32), the otpauth URI an app reads from a QR code. */
    async add (user: { id: number, username: string }): Promise<{ factorId: string, secret: string, uri: string }> {
      const factorId = randomUUID()
      const secret = generateSecret()
      await db.transaction().execute(async (trx) => {
        await trx.deleteFrom('mfa_factors').where('user_id', '=', user.id).where('verified_at', 'is', null).execute()
        await trx.insertInto('mfa_factors').values({ id: factorId, user_id: user.id, kind: 'totp', secret_sealed: box.seal(secret, factorId), created_at: clock.db() }).execute()
      })
      return { factorId, secret, uri: generateURI({ issuer: config.TOTP_ISSUER, label: user.username, secret }) }
    },

    /** Takes a first code of the user's unverified factor: undefined when there is no such factor. */
    async takeUnverified (userId: number, factorId: string, code: string): Promise<Judged | undefined> {
      const factor = await db.selectFrom('mfa_factors').select(['id', 'secret_sealed'])
        .where('id', '=', factorId).where('user_id', '=', userId).where('verified_at', 'is', null)
        .executeTakeFirst()
      return factor === undefined ? undefined : await take([factor], code)
    },

    /** The factor verified, within `executor`. */
    async markVerified (factorId: string, executor: Executor): Promise<void> {
      await executor.updateTable('mfa_factors').set({ verified_at: clock.db() }).where('id', '=', factorId).execute()
    },

    async list (userId: number): Promise<FactorInfo[]> {
      const rows = await db.selectFrom('mfa_factors').select(['id', 'kind', 'created_at', 'verified_at'])
        .where('user_id', '=', userId).orderBy('created_at').orderBy('id').execute()
      return rows.map((row) => ({ id: row.id, kind: row.kind, created_at: row.created_at, verified: row.verified_at !== null }))
    },

    /** The user's factor, if it is one of theirs: whether it is verified. */
    async find (userId: number, factorId: string): Promise<{ verified: boolean } | undefined> {
      const factor = await db.selectFrom('mfa_factors').select('verified_at').where('id', '=', factorId).where('user_id', '=', userId).executeTakeFirst()
      return factor === undefined ? undefined : { verified: factor.verified_at !== null }
    },

    /** The factor deleted, within `executor`. */
    async remove (factorId: string, executor: Executor): Promise<void> {
      await executor.deleteFrom('mfa_factors').where('id', '=', factorId).execute()
    },

    /** Every factor of the user deleted, within `executor`: how many. */
    async removeAll (userId: number, executor: Executor): Promise<number> {
      const deleted = await executor.deleteFrom('mfa_factors').where('user_id', '=', userId).executeTakeFirst()
      return Number(deleted.numDeletedRows)
    }
  }
}

export type Totp = ReturnType<typeof createTotp>
