import {
  Kysely, PGliteDialect, PostgresDialect, sql,
  type DatabaseConnection, type Dialect, type Driver, type QueryResult, type TransactionSettings
} from 'kysely'
import { Migrator, type MigrationResultSet } from 'kysely/migration'
import pg from 'pg'
import { join } from 'node:path'
import { migrations } from '../../migrations/index.ts'
import { ensureDataFolder, type ParsedConfig } from '../config.ts'
import { DatabaseUnavailableError } from '../errors.ts'
import type { Database } from './types.ts'

export type Db = Kysely<Database>

type DbConfig = Pick<ParsedConfig, 'DB_ENGINE' | 'DB_NAME' | 'DATABASE_URL' | 'DB_POOL_MAX'>

/**
 * How long a request may wait on PostgreSQL, in order: a pooled connection or a row lock, a
 * statement (the server cancels it), an answer at all (the client gives up: a stalled network
 * never answers). The route deadline, and last the socket's idle timeout, come after all of
 * them, so a client always gets a 503 before its connection is cut.
 */
export const DB_TIMEOUTS_MS = { connect: 3000, lock: 3000, statement: 5000, query: 6000 } as const

/** The PGlite data directory inside the data folder DB_NAME; `memory://` keeps it in memory. */
export function pgliteDataDir (dbName: string): string {
  return dbName.startsWith('memory://') ? dbName : join(dbName, 'pglite')
}

// SQLSTATEs of a server that is going away, overloaded, or timing out: 08xxx connection,
// 57P0x shutdown, 53300 too many connections, 57014 statement timeout, 55P03 lock timeout.
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300', '57014', '55P03'])

/**
 * Whether a driver error means the database cannot answer now. A server error always carries
 * a five-character SQLSTATE; an error without one came from the connection itself (refused,
 * reset, timed out, closed), so the request may succeed later.
 */
export function isUnavailable (error: unknown): boolean {
  if (error instanceof TypeError || error instanceof RangeError) return false
  const code = (error as { code?: unknown } | null)?.code
  // No SQLSTATE class starts with E; Node's five-letter errno codes (EPIPE, EBADF) do.
  if (typeof code === 'string' && /^[0-9A-DF-Z][0-9A-Z]{4}$/.test(code)) return UNAVAILABLE_SQLSTATES.has(code) || code.startsWith('08')
  return error instanceof Error
}

async function guard<T> (work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (error) {
    throw isUnavailable(error) ? new DatabaseUnavailableError({ cause: error }) : error
  }
}

const inner = new WeakMap<DatabaseConnection, DatabaseConnection>()
const unwrap = (connection: DatabaseConnection): DatabaseConnection => inner.get(connection) ?? connection

/** A driver whose connection failures become DatabaseUnavailableError (503): decided here, where the driver is known. */
class GuardedDriver implements Driver {
  readonly #driver: Driver
  constructor (driver: Driver) { this.#driver = driver }
  init (): Promise<void> { return guard(() => this.#driver.init()) }
  async acquireConnection (): Promise<DatabaseConnection> {
    const connection = await guard(() => this.#driver.acquireConnection())
    const guarded: DatabaseConnection = {
      executeQuery: <R>(query: Parameters<DatabaseConnection['executeQuery']>[0]): Promise<QueryResult<R>> =>
        guard(() => connection.executeQuery<R>(query)),
      streamQuery: (query, chunkSize) => connection.streamQuery(query, chunkSize)
    }
    inner.set(guarded, connection)
    return guarded
  }

  beginTransaction (c: DatabaseConnection, settings: TransactionSettings): Promise<void> { return guard(() => this.#driver.beginTransaction(unwrap(c), settings)) }
  commitTransaction (c: DatabaseConnection): Promise<void> { return guard(() => this.#driver.commitTransaction(unwrap(c))) }
  rollbackTransaction (c: DatabaseConnection): Promise<void> { return guard(() => this.#driver.rollbackTransaction(unwrap(c))) }
  releaseConnection (c: DatabaseConnection): Promise<void> { return this.#driver.releaseConnection(unwrap(c)) }
  destroy (): Promise<void> { return this.#driver.destroy() }
}

function guarded (dialect: Dialect): Dialect {
  return {
    createAdapter: () => dialect.createAdapter(),
    createDriver: () => new GuardedDriver(dialect.createDriver()),
    createIntrospector: (db) => dialect.createIntrospector(db),
    createQueryCompiler: () => dialect.createQueryCompiler()
  }
}

function pgliteDialect (dbName: string): Dialect {
  return new PGliteDialect({
    // Imported only when chosen: PostgreSQL deployments never load the WebAssembly engine.
    pglite: async () => {
      const [{ PGlite }, { citext }] = await Promise.all([
        import('@electric-sql/pglite'),
        import('@electric-sql/pglite/contrib/citext')
      ])
      // PGlite writes its files world-writable; a folder of the owner's alone keeps others out.
      if (!dbName.startsWith('memory://')) await ensureDataFolder(dbName)
      return await PGlite.create(pgliteDataDir(dbName), { extensions: { citext } })
    }
  })
}

// Each PostgreSQL database's pool, for its usage figures.
const pools = new WeakMap<Db, pg.Pool>()

/** How many connections the pool holds, how many of them are idle, how many queries wait for one; PGlite has no pool. */
export function poolUsage (db: Db): { total: number, idle: number, waiting: number } | undefined {
  const pool = pools.get(db)
  return pool === undefined ? undefined : { total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }
}

function postgresDialect (url: string, poolMax: number, onPoolError: (error: Error) => void): PostgresDialect & { pool: pg.Pool } {
  const pool = new pg.Pool({
    connectionString: url,
    max: poolMax,
    connectionTimeoutMillis: DB_TIMEOUTS_MS.connect,
    lock_timeout: DB_TIMEOUTS_MS.lock,
    statement_timeout: DB_TIMEOUTS_MS.statement,
    query_timeout: DB_TIMEOUTS_MS.query,
    idle_in_transaction_session_timeout: 30_000
  })
  // A client losing its server (restart, failover) must not crash the process: an idle one is
  // the pool's, a checked-out one fails its query (503) and the next query reconnects.
  pool.on('error', onPoolError)
  pool.on('connect', (client) => client.on('error', onPoolError))
  return Object.assign(new PostgresDialect({ pool }), { pool })
}

export function createDb (config: DbConfig, onPoolError: (error: Error) => void = () => {}): Db {
  if (config.DB_ENGINE === 'pglite') return new Kysely<Database>({ dialect: guarded(pgliteDialect(config.DB_NAME)) })
  // parseConfig guarantees DATABASE_URL with DB_ENGINE=postgres.
  const dialect = postgresDialect(config.DATABASE_URL!, config.DB_POOL_MAX, onPoolError)
  const db = new Kysely<Database>({ dialect: guarded(dialect) })
  pools.set(db, dialect.pool)
  return db
}

function migrator (db: Db): Migrator {
  return new Migrator({ db, provider: { getMigrations: async () => migrations } })
}

const messageOf = (error: unknown): string => {
  const cause = (error as { cause?: unknown }).cause
  return error instanceof DatabaseUnavailableError && cause instanceof Error ? cause.message : error instanceof Error ? error.message : String(error)
}

/**
 * The names of the migrations run, or an error naming the one that failed. A failure before any
 * migration ran that came from the connection (refused, reset, timed out, starting up) is a
 * DatabaseUnavailableError: the caller may try again.
 */
function ran ({ error, results }: MigrationResultSet): string[] {
  if (error === undefined) return (results ?? []).map((r) => r.migrationName)
  const failed = results?.find((r) => r.status === 'Error')?.migrationName
  if (failed !== undefined) throw new Error(`${failed}: ${messageOf(error)}`, { cause: error })
  throw isUnavailable(error) && !(error instanceof DatabaseUnavailableError) ? new DatabaseUnavailableError({ cause: error }) : error
}

// Migrating is not a request: waiting for another replica's migrations (Kysely's advisory lock)
// or a long migration must not hit the request timeouts, so PostgreSQL migrations run on a
// connection of their own without them. PGlite has none, and one connection only.
async function migrate (config: DbConfig, db: Db, step: (migrator: Migrator) => Promise<MigrationResultSet>): Promise<string[]> {
  const own = config.DB_ENGINE === 'postgres'
    ? new Kysely<Database>({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: config.DATABASE_URL, max: 1, connectionTimeoutMillis: DB_TIMEOUTS_MS.connect }) })
    })
    : db
  try {
    return ran(await step(migrator(own)))
  } catch (error) {
    throw new Error(`database migration failed: ${messageOf(error)}`, { cause: error })
  } finally {
    if (own !== db) await own.destroy()
  }
}

/** Runs the pending migrations; Kysely holds an advisory lock meanwhile, so replicas take turns. */
export async function migrateToLatest (config: DbConfig, db: Db): Promise<string[]> {
  return await migrate(config, db, (m) => m.migrateToLatest())
}

export async function migrateDown (config: DbConfig, db: Db): Promise<string[]> {
  return await migrate(config, db, (m) => m.migrateDown())
}

/** Whether citext compares non-ASCII letters without regard to case: not on a C-locale cluster. */
export async function foldsCase (db: Db): Promise<boolean> {
  const { rows } = await sql<{ folds: boolean }>`select 'É'::citext = 'é'::citext as folds`.execute(db)
  return rows[0]?.folds === true
}

// The round trip in flight per database: probes share it, so a hung database does not collect them.
const pings = new WeakMap<Db, Promise<void>>()

/**
 * One round trip to the database; throws DatabaseUnavailableError when it cannot answer, or
 * has not answered within `timeoutMs` (a hung connection waits for the request timeouts).
 */
export async function ping (db: Db, timeoutMs: number = DB_TIMEOUTS_MS.query): Promise<void> {
  let roundTrip = pings.get(db)
  if (roundTrip === undefined) {
    roundTrip = sql`select 1`.execute(db).then(() => {}).finally(() => pings.delete(db))
    pings.set(db, roundTrip)
  }
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new DatabaseUnavailableError({ cause: new Error(`no answer within ${timeoutMs} ms`) })), timeoutMs)
  })
  try {
    await Promise.race([roundTrip, late])
  } finally {
    clearTimeout(timer)
  }
}
