import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { createDb, foldsCase, migrateToLatest, type Db } from '../src/db/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    db: Db
  }
}

/** Kysely over PostgreSQL or PGlite (https://kysely.dev); migrates to the latest schema at start. */
async function dbPlugin (fastify: FastifyInstance): Promise<void> {
  const { config } = fastify
  const db = createDb(config, (error) => fastify.log.warn({ err: error }, 'idle database connection lost'))
  fastify.addHook('onClose', async () => { await db.destroy() })
  const applied = await migrateToLatest(config, db)
  if (applied.length > 0) fastify.log.info({ migrations: applied }, 'database migrated')
  if (!await foldsCase(db)) {
    fastify.log.warn('the database locale folds only ASCII letters: usernames and emails differing in the case of other letters count as different; use a UTF-8 LC_CTYPE')
  }
  fastify.decorate('db', db)
}

export default fp(dbPlugin, { name: 'db', dependencies: ['config'] })
