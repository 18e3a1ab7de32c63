import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import { DatabaseUnavailableError } from '../src/errors.ts'
import { createDb, foldsCase, migrateToLatest, type Db } from '../src/db/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    db: Db
  }
}

/** The first wait between attempts to reach PostgreSQL at start, doubled each time up to the last. */
const START_RETRY_MS = { first: 250, last: 5000 } as const

/**
 * Migrates at start; PostgreSQL that does not answer yet (a cluster starting beside the service,
 * a network not up) is tried again with exponential backoff for DB_START_TIMEOUT. Only a
 * connection that failed is tried again: a migration that fails fails at once.
 */
async function migrateWhenReachable (fastify: FastifyInstance, db: Db): Promise<string[]> {
  const { config } = fastify
  const deadline = Date.now() + config.dbStartTimeoutS * 1000
  for (let attempt = 1, wait: number = START_RETRY_MS.first; ; attempt++, wait = Math.min(wait * 2, START_RETRY_MS.last)) {
    try {
      return await migrateToLatest(config, db)
    } catch (error) {
      const cause = (error as Error).cause
      if (config.DB_ENGINE !== 'postgres' || !(cause instanceof DatabaseUnavailableError)) throw error
      const left = deadline - Date.now()
      if (left <= 0) {
        const reason = cause.cause instanceof Error ? cause.cause.message : cause.message
        throw new Error(`the database did not answer within ${config.dbStartTimeoutS}s (DB_START_TIMEOUT): ${reason}`, { cause: error })
      }
      const retryInMs = Math.min(wait, left)
      fastify.log.warn({ attempt, retryInMs, err: cause.cause ?? cause }, 'the database does not answer yet; trying again')
      await sleep(retryInMs)
    }
  }
}

/** Kysely over PostgreSQL or PGlite (https://kysely.dev); migrates to the latest schema at start. */
async function dbPlugin (fastify: FastifyInstance): Promise<void> {
  const { config } = fastify
  // An idle client whose server went away (restart, failover, a dropped network) is the pool's
  // to replace: logged, never fatal; the message and code only, as pg hangs the whole client on it.
  const db = createDb(config, (error) => fastify.log.warn({ err: { message: error.message, code: (error as { code?: unknown }).code } }, 'idle database connection lost'))
  fastify.addHook('onClose', async () => { await db.destroy() })
  const applied = await migrateWhenReachable(fastify, db)
  if (applied.length > 0) fastify.log.info({ migrations: applied }, 'database migrated')
  if (!await foldsCase(db)) {
    fastify.log.warn('the database locale folds only ASCII letters: usernames and emails differing in the case of other letters count as different; use a UTF-8 LC_CTYPE')
  }
  fastify.decorate('db', db)
}

export default fp(dbPlugin, { name: 'db', dependencies: ['config'] })
