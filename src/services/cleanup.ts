import { sql } from 'kysely'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { lockKey } from '../db/locks.ts'
import { seconds, systemClock, type Clock } from '../lib/clock.ts'

export interface Flushed { sessions: number, refreshTokens: number }

const BATCH = 1000

type FlushConfig = Pick<Config, 'accessTtlS' | 'refreshTtlS'>

/**
 * Deletes, in batches of 1,000, the refresh tokens past their expiry and the sessions that
 * ended: past their absolute end, or revoked longer ago than any of their tokens could live.
 * Nothing reuse detection needs goes: a used refresh token stays until it expires, since a
 * thief may present it until then. One flush at a time across replicas (an advisory lock):
 * this one waits for another to finish.
 */
export async function flushTokens (db: Db, config: FlushConfig, clock: Clock = systemClock): Promise<Flushed> {
  return (await flush(db, config, clock, true))!
}

/** The same, for a replica's timer: skips the round (undefined) when another replica is at it. */
export async function pruneTokens (db: Db, config: FlushConfig, clock: Clock): Promise<Flushed | undefined> {
  return await flush(db, config, clock, false)
}

async function flush (db: Db, config: FlushConfig, clock: Clock, wait: boolean): Promise<Flushed | undefined> {
  const keepRevokedS = Math.max(config.accessTtlS, config.refreshTtlS)
  const flushed: Flushed = { sessions: 0, refreshTokens: 0 }
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
      return { refreshTokens: Number(tokens.numDeletedRows), sessions: Number(sessions.numDeletedRows) }
    })
    if (batch === undefined) return undefined
    flushed.refreshTokens += batch.refreshTokens
    flushed.sessions += batch.sessions
    if (batch.refreshTokens < BATCH && batch.sessions < BATCH) return flushed
  }
}
