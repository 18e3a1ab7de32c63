import { createHmac, randomBytes, randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import type { Config } from '../../config.ts'
import type { Db, Executor } from '../../db/index.ts'
import type { Clock } from '../../lib/clock.ts'
import { subkey } from '../../lib/subkeys.ts'
import type { Judged } from './totp.ts'

const RECOVERY_CODES = 10

// A recovery code: 80 random bits as 20 hex digits in groups of five; typed back in any case,
// with or without the dashes and spaces.
const newRecoveryCode = (): string => randomBytes(10).toString('hex').match(/.{5}/g)!.join('-')
const normalizeRecoveryCode = (code: string): string => code.toLowerCase().replace(/[\s-]/g, '')

export interface RecoveryCodesDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'SECRET_KEY'>
}

/** Recovery codes (`recovery_codes`): ten at a time, shown once, one HMAC'd row each, each spent once. */
export function createRecoveryCodes ({ db, clock, config }: RecoveryCodesDeps) {
  const recoveryKey = subkey(config.SECRET_KEY, 'recovery-codes')
  const recoveryHash = (userId: number, code: string): string => createHmac('sha256', recoveryKey).update(`${userId}:${normalizeRecoveryCode(code)}`).digest('base64url')

  return {
    // Spends one of the user's recovery codes: `used` when it is one of theirs spent already.
    async take (userId: number, code: string, executor: Executor): Promise<Judged> {
      const hash = recoveryHash(userId, code)
      const spent = await executor.updateTable('recovery_codes').set({ used_at: clock.db() })
        .where('user_id', '=', userId).where('code_hash', '=', hash).where('used_at', 'is', null)
        .executeTakeFirst()
      if (spent.numUpdatedRows === 1n) return 'right'
      const known = await executor.selectFrom('recovery_codes').select('id').where('user_id', '=', userId).where('code_hash', '=', hash).executeTakeFirst()
      return known === undefined ? 'wrong' : 'used'
    },

    async left (userId: number): Promise<number> {
      const { left } = await db.selectFrom('recovery_codes').select(sql<string>`count(*)`.as('left'))
        .where('user_id', '=', userId).where('used_at', 'is', null).executeTakeFirstOrThrow()
      return Number(left)
    },

    // Ten new recovery codes in place of the old ones: shown once, kept as HMACs.
    async replace (userId: number, executor: Executor): Promise<string[]> {
      const codes = Array.from({ length: RECOVERY_CODES }, newRecoveryCode)
      await executor.deleteFrom('recovery_codes').where('user_id', '=', userId).execute()
      await executor.insertInto('recovery_codes')
        .values(codes.map((code) => ({ id: randomUUID(), user_id: userId, code_hash: recoveryHash(userId, code), created_at: clock.db() })))
        .execute()
      return codes
    },

    /** Every recovery code of the user deleted, within `executor`. */
    async removeAll (userId: number, executor: Executor): Promise<void> {
      await executor.deleteFrom('recovery_codes').where('user_id', '=', userId).execute()
    }
  }
}

export type RecoveryCodes = ReturnType<typeof createRecoveryCodes>
