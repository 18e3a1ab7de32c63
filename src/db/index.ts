import { PGlite } from '@electric-sql/pglite'
import { citext } from '@electric-sql/pglite/contrib/citext'
import { Kysely, PGliteDialect, PostgresDialect, sql } from 'kysely'
import { Migrator, type MigrationResultSet } from 'kysely/migration'
import pg from 'pg'
import { join } from 'node:path'
import { migrations } from '../../migrations/index.ts'
import type { Config } from '../config.ts'
import type { Database } from './types.ts'

export type Db = Kysely<Database>

type DbConfig = Pick<Config, 'DB_ENGINE' | 'DB_NAME' | 'DATABASE_URL' | 'DB_POOL_MAX'>

/** The PGlite data directory inside the data folder DB_NAME; `memory://` keeps it in memory. */
export function pgliteDataDir (dbName: string): string {
  return dbName.startsWith('memory://') ? dbName : join(dbName, 'pglite')
}

export function createDb (config: DbConfig, onPoolError: (error: Error) => void = () => {}): Db {
  if (config.DB_ENGINE === 'pglite') {
    return new Kysely<Database>({
      dialect: new PGliteDialect({ pglite: () => PGlite.create(pgliteDataDir(config.DB_NAME), { extensions: { citext } }) })
    })
  }
  if (config.DATABASE_URL === undefined) {
    throw new Error('DATABASE_URL is required when DB_ENGINE=postgres')
  }
  const pool = new pg.Pool({
    connectionString: config.DATABASE_URL,
    max: config.DB_POOL_MAX,
    // A request waits at most this long for a connection, a lock or a statement, then
    // answers 503 instead of hanging.
    connectionTimeoutMillis: 5000,
    lock_timeout: 5000,
    statement_timeout: 10_000,
    idle_in_transaction_session_timeout: 30_000
  })
  // A client losing its server (restart, failover) must not crash the process: an idle one is
  // the pool's, a checked-out one fails its query (503) and the next query reconnects.
  pool.on('error', onPoolError)
  pool.on('connect', (client) => client.on('error', onPoolError))
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) })
}

function migrator (db: Db): Migrator {
  return new Migrator({ db, provider: { getMigrations: async () => migrations } })
}

const messageOf = (error: unknown): string => error instanceof Error ? error.message : String(error)

/** The names of the migrations run, or an error naming the one that failed. */
function ran ({ error, results }: MigrationResultSet): string[] {
  if (error === undefined) return (results ?? []).map((r) => r.migrationName)
  const failed = results?.find((r) => r.status === 'Error')?.migrationName
  throw failed === undefined ? error : new Error(`${failed}: ${messageOf(error)}`, { cause: error })
}

// Migrating is not a request: waiting for another replica's migrations (Kysely's advisory lock)
// or a long migration must not hit the request timeouts, so one connection lifts them meanwhile.
async function migrate (db: Db, step: (migrator: Migrator) => Promise<MigrationResultSet>): Promise<string[]> {
  try {
    return await db.connection().execute(async (connection) => {
      await sql`set statement_timeout = 0`.execute(connection)
      await sql`set lock_timeout = 0`.execute(connection)
      try {
        return ran(await step(migrator(connection)))
      } finally {
        await sql`reset statement_timeout`.execute(connection)
        await sql`reset lock_timeout`.execute(connection)
      }
    })
  } catch (error) {
    throw new Error(`database migration failed: ${messageOf(error)}`, { cause: error })
  }
}

/** Runs the pending migrations; Kysely holds an advisory lock meanwhile, so replicas take turns. */
export async function migrateToLatest (db: Db): Promise<string[]> {
  return await migrate(db, (m) => m.migrateToLatest())
}

export async function migrateDown (db: Db): Promise<string[]> {
  return await migrate(db, (m) => m.migrateDown())
}

/** Whether citext compares non-ASCII letters without regard to case: not on a C-locale cluster. */
export async function foldsCase (db: Db): Promise<boolean> {
  const { rows } = await sql<{ folds: boolean }>`select 'É'::citext = 'é'::citext as folds`.execute(db)
  return rows[0]?.folds === true
}
