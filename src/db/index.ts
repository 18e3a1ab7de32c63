import {
  Kysely, PostgresDialect, sql,
  type DatabaseConnection, type Dialect, type Driver, type QueryResult, type Transaction, type TransactionSettings
} from 'kysely'
import { Migrator, type MigrationResultSet } from 'kysely/migration'
import type pg from 'pg'
import { migrations } from '../../migrations/index.ts'
import type { ParsedConfig } from '../config.ts'
import { DatabaseUnavailableError } from '../errors.ts'
import { FolderLockedError } from '../lib/folder-lock.ts'
import { DB_TIMEOUTS_MS, forKysely, requestPool, workPool } from './connections.ts'
import { pgliteDataDir, pgliteDialect } from './pglite.ts'
import type { Database } from './types.ts'

export { DB_TIMEOUTS_MS, pgliteDataDir }

export type Db = Kysely<Database>

/** The database or a transaction: a query helper's executor, so one transaction can span services. */
export type Executor = Kysely<Database> | Transaction<Database>

type DbConfig = Pick<ParsedConfig, 'DB_ENGINE' | 'DB_NAME' | 'DATABASE_URL' | 'DB_POOL_MAX'>

// SQLSTATEs of a server that is going away, overloaded, or timing out: 08xxx connection,
// 57P0x shutdown, 53300 too many connections, 57014 statement timeout, 55P03 lock timeout.
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300', '57014', '55P03'])

/**
 * Whether a driver error means the database cannot answer now. A server error always carries
 * a five-character SQLSTATE; an error without one came from the connection itself (refused,
 * reset, timed out, closed), so the request may succeed later.
 */
export function isUnavailable (error: unknown): boolean {
  if (error instanceof TypeError || error instanceof RangeError || error instanceof FolderLockedError) return false
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
  readonly #afterDestroy: () => Promise<void>
  constructor (driver: Driver, afterDestroy: () => Promise<void>) {
    this.#driver = driver
    this.#afterDestroy = afterDestroy
  }

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
  async destroy (): Promise<void> {
    await this.#driver.destroy()
    await this.#afterDestroy()
  }
}

/** `dialect` with connection failures as DatabaseUnavailableError; `afterDestroy` runs once it closed. */
function guarded (dialect: Dialect, afterDestroy: () => Promise<void> = async () => {}): Dialect {
  return {
    createAdapter: () => dialect.createAdapter(),
    createDriver: () => new GuardedDriver(dialect.createDriver(), afterDestroy),
    createIntrospector: (db) => dialect.createIntrospector(db),
    createQueryCompiler: () => dialect.createQueryCompiler()
  }
}

// Each PostgreSQL database's pool, for its usage figures.
const pools = new WeakMap<Db, pg.Pool>()

/** How many connections the pool holds, how many of them are idle, how many queries wait for one; PGlite has no pool. */
export function poolUsage (db: Db): { total: number, idle: number, waiting: number } | undefined {
  const pool = pools.get(db)
  return pool === undefined ? undefined : { total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }
}

function postgresDialect (url: string, poolMax: number, onPoolError: (error: Error) => void): PostgresDialect & { pool: pg.Pool } {
  const pool = requestPool(url, poolMax, onPoolError)
  return Object.assign(new PostgresDialect({ pool: forKysely(pool) }), { pool })
}

export function createDb (config: DbConfig, onPoolError: (error: Error) => void = () => {}): Db {
  if (config.DB_ENGINE === 'pglite') {
    const { dialect, release } = pgliteDialect(config.DB_NAME)
    return new Kysely<Database>({ dialect: guarded(dialect, release) })
  }
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

// SQLSTATEs a server (or a pooler) answers a connection it will not take with: a protocol it
// refuses (PgBouncer's unsupported startup parameter), a failed login, no such database, no
// right to connect. Trying again changes nothing.
const REFUSED_SQLSTATES = new Set(['08P01', '28000', '28P01', '3D000', '42501'])

/** A connection the database refused, saying why: not worth trying again, and never a migration's fault. */
export class ConnectionRefusedError extends Error {
  override name = 'ConnectionRefusedError'
}

/** The refusal an error of a connection attempt is, if it is one. */
function refusal (error: unknown): ConnectionRefusedError | undefined {
  const cause = error instanceof DatabaseUnavailableError ? error.cause : error
  const code = (cause as { code?: unknown } | null)?.code
  if (typeof code !== 'string' || !REFUSED_SQLSTATES.has(code)) return undefined
  return new ConnectionRefusedError(`the database refused the connection: ${(cause as Error).message}`, { cause })
}

/**
 * The names of the migrations run, or an error naming the one that failed. A failure before any
 * migration ran is the connection's: a ConnectionRefusedError when the server refused it, else
 * (refused, reset, timed out, starting up) a DatabaseUnavailableError: the caller may try again.
 */
function ran ({ error, results }: MigrationResultSet): string[] {
  if (error === undefined) return (results ?? []).map((r) => r.migrationName)
  const failed = results?.find((r) => r.status === 'Error')?.migrationName
  if (failed !== undefined) throw new Error(`database migration failed: ${failed}: ${messageOf(error)}`, { cause: error })
  const refused = refusal(error)
  if (refused !== undefined) throw refused
  if (error instanceof FolderLockedError) throw error
  if (isUnavailable(error)) throw error instanceof DatabaseUnavailableError ? error : new DatabaseUnavailableError({ cause: error })
  throw new Error(`database migration failed: ${messageOf(error)}`, { cause: error })
}

// Migrating is not a request: waiting for another replica's migrations (Kysely's advisory lock)
// or a long migration must not hit the request timeouts, so PostgreSQL migrations run on a
// connection of their own without them. PGlite has none, and one connection only.
async function migrate (config: DbConfig, db: Db, step: (migrator: Migrator) => Promise<MigrationResultSet>): Promise<string[]> {
  const own = config.DB_ENGINE === 'postgres'
    ? new Kysely<Database>({ dialect: new PostgresDialect({ pool: workPool(config.DATABASE_URL!) }) })
    : db
  try {
    return ran(await step(migrator(own)))
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

/**
 * The schemas of the search path in which roles other than authgate's own may create objects
 * (PUBLIC when everyone may), each with those roles; superusers, and groups whose rights
 * authgate's role holds anyway, are left out.
 */
export async function foreignCreators (db: Db): Promise<Array<{ schema: string, roles: string[] }>> {
  const { rows } = await sql<{ schema: string, roles: string[] }>`
    select n.nspname as schema,
      case when exists (select 1 from pg_catalog.aclexplode(n.nspacl) a where a.grantee = 0 and a.privilege_type = 'CREATE')
        then array['PUBLIC']
        else array(
          select r.rolname::text from pg_catalog.pg_roles r
          where r.rolname <> current_user and not r.rolsuper and r.rolname not like 'pg\_%'
            and pg_catalog.has_schema_privilege(r.oid, n.oid, 'CREATE')
            and not pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')
          order by 1)
      end as roles
    from pg_catalog.pg_namespace n
    where n.nspname = any (pg_catalog.current_schemas(false))
    order by 1`.execute(db)
  return rows.filter((row) => row.roles.length > 0)
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
