import type { PostgresPool } from 'kysely'
import pg from 'pg'

/**
 * How long a request may wait on PostgreSQL, in order: a pooled connection or a row lock, a
 * statement (the server cancels it), an answer at all (the client gives up: a stalled network
 * never answers). The route deadline, and last the socket's idle timeout, come after all of
 * them, so a client always gets a 503 before its connection is cut.
 */
export const DB_TIMEOUTS_MS = { connect: 3000, lock: 3000, statement: 5000, query: 6000, idleInTransaction: 30_000 } as const

// Set by a statement on each new connection, never as startup parameters: PgBouncer refuses a
// connection whose startup packet carries them. On a direct connection they hold for its whole
// life; behind a transaction pooler they reach only the server connections the statement ran
// on, so the operator sets them for the role (the README says how). The client-side
// query_timeout holds either way: every request gets its answer in time.
const SESSION_SETTINGS = [
  `set statement_timeout = ${DB_TIMEOUTS_MS.statement}`,
  `set lock_timeout = ${DB_TIMEOUTS_MS.lock}`,
  `set idle_in_transaction_session_timeout = ${DB_TIMEOUTS_MS.idleInTransaction}`
].join('; ')

/** The request pool: timeouts on every connection; `onError` hears of connections lost while idle. */
export function requestPool (url: string, max: number, onError: (error: Error) => void): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max, connectionTimeoutMillis: DB_TIMEOUTS_MS.connect, query_timeout: DB_TIMEOUTS_MS.query })
  // A client losing its server (restart, failover) must not crash the process: an idle one is
  // the pool's, a checked-out one fails its query (503) and the next query reconnects.
  pool.on('error', onError)
  pool.on('connect', (client) => {
    client.on('error', onError)
    // Queued before the query the connection was made for.
    client.query(SESSION_SETTINGS).catch(onError)
  })
  return pool
}

/**
 * A pool of one connection without request timeouts, for work that is not a request:
 * migrations (which may wait for another replica's), an import reading a whole table. An
 * unreachable server still fails within the connect timeout.
 */
export function workPool (url: string): pg.Pool {
  return new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: DB_TIMEOUTS_MS.connect })
}

/** One connection of its own (the notification listener, the heartbeat), named in pg_stat_activity. */
export function ownClient (url: string, name: string): pg.Client {
  return new pg.Client({ connectionString: url, application_name: name, connectionTimeoutMillis: DB_TIMEOUTS_MS.connect, keepAlive: true })
}

// A connection that is gone: its server ended it (class 08, or 57P01-57P03 as a restart or a
// failover ends it), or the client lost it without a server's word (no SQLSTATE: reset, closed,
// timed out).
function connectionLost (error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code.startsWith('08') || /^57P0[123]$/.test(code)
  return error instanceof Error
}

/**
 * The pool as Kysely takes it, where a client whose connection died under a query is destroyed
 * when it is released instead of going back to the pool: pg learns that the socket ended only
 * after the query's error, and Kysely releases the client in between, so the next request
 * would be handed a dead connection (and answered 503).
 */
export function forKysely (pool: pg.Pool): PostgresPool {
  const broken = new WeakSet<pg.PoolClient>()
  const watched = new WeakSet<pg.PoolClient>()
  return {
    options: pool.options,
    end: () => pool.end(),
    async connect () {
      const client = await pool.connect()
      if (!watched.has(client)) {
        watched.add(client)
        const query = client.query.bind(client) as (...args: unknown[]) => unknown
        client.query = ((...args: unknown[]) => {
          const result = query(...args)
          if (result instanceof Promise) result.catch((error: unknown) => { if (connectionLost(error)) broken.add(client) })
          return result
        }) as typeof client.query
      }
      const release = client.release
      client.release = (destroy?: boolean | Error) => release.call(client, destroy === true || destroy instanceof Error || broken.has(client) ? true : undefined)
      return client
    }
  }
}
