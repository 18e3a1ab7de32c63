import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import { DatabaseUnavailableError } from '../src/errors.ts'
import { createDb, foldsCase, foreignCreators, migrateToLatest, type Db } from '../src/db/index.ts'
import { Backoff } from '../src/lib/backoff.ts'

declare module 'fastify' {
  interface FastifyInstance {
    db: Db
  }
}

/**
 * Migrates at start; PostgreSQL that does not answer yet (a cluster starting beside the service,
 * a network not up) is tried again with exponential backoff (0.25 s to 5 s) for DB_START_TIMEOUT.
 * Only a connection that failed is tried again: one the database refused (a wrong password, no
 * such database, a startup parameter a pooler refuses), or a migration that fails, fails at once.
 */
async function migrateWhenReachable (fastify: FastifyInstance, db: Db): Promise<string[]> {
  const { config } = fastify
  const deadline = Date.now() + config.dbStartTimeoutS * 1000
  const waits = new Backoff(250, 5000)
  for (let attempt = 1; ; attempt++) {
    try {
      return await migrateToLatest(config, db)
    } catch (error) {
      if (config.DB_ENGINE !== 'postgres' || !(error instanceof DatabaseUnavailableError)) throw error
      const reason = error.cause instanceof Error ? error.cause : error
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`the database did not answer within ${config.dbStartTimeoutS}s (DB_START_TIMEOUT): ${reason.message}`, { cause: error })
      const retryInMs = Math.min(waits.next(), left)
      fastify.log.warn({ attempt, retryInMs, err: reason }, 'the database does not answer yet; trying again')
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
  // CVE-2018-1058: whoever may create in a schema of the search path may plant a function there
  // that a query of authgate's resolves to. authgate's own SQL is written so that none does; the
  // operator should still know.
  for (const { schema, roles } of await foreignCreators(db)) {
    fastify.log.warn({ schema, roles }, `roles other than authgate's own may create objects in the schema ${schema} of its search path: REVOKE CREATE ON SCHEMA ${schema} FROM ${roles.join(', ')}`)
  }
  fastify.decorate('db', db)
}

export default fp(dbPlugin, { name: 'db', dependencies: ['config'] })
