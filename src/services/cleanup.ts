import { sql } from 'kysely'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { lockKey } from '../db/locks.ts'
import { seconds, type Clock } from '../lib/clock.ts'
import type { Logger } from '../lib/logger.ts'
import type { AuditTrail } from './audit.ts'
import { MAIL_LIMIT_WINDOW_S } from './one-time-codes.ts'

export interface Flushed { sessions: number, refreshTokens: number, assertions: number, oneTimeCodes: number }

const BATCH = 1000

export interface CleanupDeps {
  db: Db
  config: Pick<Config, 'accessTtlS' | 'refreshTtlS' | 'auditRetentionS' | 'passwordResetTtlS' | 'emailVerificationTtlS' | 'emailSignInTtlS'>
  clock: Clock
  audit: AuditTrail
  log: Logger
}

/**
 * Deleting what is over: the refresh tokens past their expiry and the sessions that ended (past
 * their absolute end, or revoked longer ago than any of their tokens could live), in batches of
 * 1,000; the jti of client assertions past their expiry; the one-time secrets spent or expired
 * once the per-account mail limit no longer counts them; and audit events past AUDIT_RETENTION. Nothing reuse detection needs goes: a used
 * refresh token stays until it expires, since a thief may present it until then. One flush at a
 * time across replicas (an advisory lock).
 */
export function createCleanup ({ db, config, clock, audit, log }: CleanupDeps) {
  const keepRevokedS = Math.max(config.accessTtlS, config.refreshTtlS)
  const longestCodeS = Math.max(config.passwordResetTtlS, config.emailVerificationTtlS, config.emailSignInTtlS)

  // One batch after another; undefined when another replica holds the lock and `wait` is false.
  async function flush (wait: boolean): Promise<Flushed | undefined> {
    const flushed: Flushed = { sessions: 0, refreshTokens: 0, assertions: 0, oneTimeCodes: 0 }
    for (;;) {
      const batch = await db.transaction().execute(async (trx) => {
        const lock = wait
          ? sql<{ locked: boolean }>`select pg_advisory_xact_lock(${lockKey('flush')}) is not null as locked`
          : sql<{ locked: boolean }>`select pg_try_advisory_xact_lock(${lockKey('flush')}) as locked`
        if ((await lock.execute(trx)).rows[0]?.locked !== true) return undefined
        const tokens = await trx.deleteFrom('refresh_tokens')
          .where('jti', 'in', (eb) => eb.selectFrom('refresh_tokens').select('jti').where('expires_at', '<', clock.db()).limit(BATCH))
          .executeTakeFirst()
        const sessions = await trx.deleteFrom('sessions')
          .where('id', 'in', (eb) => eb.selectFrom('sessions').select('id')
            .where((w) => w.or([
              w('expires_at', '<', clock.db()),
              w('revoked_at', '<', sql<Date>`${clock.db()} - ${seconds(keepRevokedS)}`)
            ]))
            .limit(BATCH))
          .executeTakeFirst()
        // A client assertion's jti is kept only while the assertion could be presented: a few
        // minutes of them, no batches needed.
        const assertions = await trx.deleteFrom('oauth_client_assertions').where('expires_at', '<', clock.db()).executeTakeFirst()
        // A secret spent, cancelled or expired is kept while the per-account mail limit counts it.
        const codes = await trx.deleteFrom('one_time_codes')
          .where('id', 'in', (eb) => eb.selectFrom('one_time_codes').select('id')
            .where('created_at', '<', sql<Date>`${clock.db()} - ${seconds(MAIL_LIMIT_WINDOW_S)}`)
            .where((w) => w.or([w('expires_at', '<', clock.db()), w('consumed_at', 'is not', null)]))
            .limit(BATCH))
          .executeTakeFirst()
        // The tries of an address outlive no code they could count for.
        await trx.deleteFrom('mail_code_tries')
          .where('created_at', '<', sql<Date>`${clock.db()} - ${seconds(longestCodeS)}`)
          .execute()
        return { refreshTokens: Number(tokens.numDeletedRows), sessions: Number(sessions.numDeletedRows), assertions: Number(assertions.numDeletedRows), oneTimeCodes: Number(codes.numDeletedRows) }
      })
      if (batch === undefined) return undefined
      flushed.refreshTokens += batch.refreshTokens
      flushed.sessions += batch.sessions
      flushed.assertions += batch.assertions
      flushed.oneTimeCodes += batch.oneTimeCodes
      if (batch.refreshTokens < BATCH && batch.sessions < BATCH && batch.oneTimeCodes < BATCH) return flushed
    }
  }

  return {
    /** tokens:flush: waits for another replica at it to finish. */
    async flush (): Promise<Flushed> {
      return (await flush(true))!
    },

    /** A replica's round: skipped (undefined) when another replica is at it; old audit events too. Logs what it did; never throws. */
    async prune (): Promise<Flushed | undefined> {
      try {
        const flushed = await flush(false)
        if (flushed !== undefined && flushed.sessions + flushed.refreshTokens + flushed.assertions + flushed.oneTimeCodes > 0) log.info({ flushed }, 'pruned ended sessions, spent client assertions and one-time secrets')
        const events = await audit.prune(config.auditRetentionS)
        if (events > 0) log.info({ events }, 'pruned old audit events')
        return flushed
      } catch (error) {
        log.warn({ err: error }, 'pruning ended sessions or old audit events failed')
        return undefined
      }
    }
  }
}

export type Cleanup = ReturnType<typeof createCleanup>
