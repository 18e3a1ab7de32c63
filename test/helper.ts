import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import fp from 'fastify-plugin'
import { createHmac, randomBytes } from 'node:crypto'
import { accessSync, constants, cpSync, existsSync, statfsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import type { Test } from 'tap'
import app, { serverOptions, type AppOptions } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'
import { pgliteDataDir } from '../src/db/index.ts'
import type { AuditEventsTable } from '../src/db/types.ts'
import { databaseTime, type Clock } from '../src/lib/clock.ts'
import { subkey } from '../src/lib/subkeys.ts'

export const SECRET_KEY = 'test-secret-key-that-is-long-enough-for-production'

/**
 * A clock the tests move: token times stand still but for `advance`; the database clock runs
 * on, shifted by the same amount, so grace periods and session ages follow it too.
 */
export class TestClock implements Clock {
  readonly #start = Date.now()
  #offsetMs = 0
  now = (): Date => new Date(this.#start + this.#offsetMs)
  offsetS = (): number => this.#offsetMs / 1000
  db = () => databaseTime(this.offsetS())
  advance (seconds: number): void {
    this.#offsetMs += seconds * 1000
  }
}

/** An initialised PGlite cluster, made by test/pglite-template.ts and kept between runs. */
export const PGLITE_TEMPLATE = join(import.meta.dirname, '..', '.tap', 'pglite-template')
/** The same, migrated to the latest schema. */
export const PGLITE_MIGRATED_TEMPLATE = join(import.meta.dirname, '..', '.tap', 'pglite-template-migrated')

/**
 * Where the PGlite data folders go: a memory file system (/dev/shm) when it has room for many,
 * else the temporary directory. On the disk each copy of a template (a thousand files) costs
 * 0.2 to 0.4 s of CPU, most of it the file system's, and the disk writes back folders that are
 * removed a few seconds later; in memory, 0.04 s.
 */
const DATABASE_FOLDERS = ((): string => {
  const shm = '/dev/shm'
  try {
    const { bavail, bsize } = statfsSync(shm)
    accessSync(shm, constants.W_OK)
    // Room for a hundred folders (40 MB each) at once, far more than the runs hold.
    if (bavail * bsize >= 4 * 2 ** 30) return shm
  } catch {}
  return tmpdir()
})()

/**
 * A fresh database: a PGlite data folder (a copy of a template, removed at teardown) by
 * default, or, with DB_ENGINE=postgres and DATABASE_URL, a new PostgreSQL database dropped
 * at teardown. `migrated` (the default): on PGlite a copy of the migrated template, sparing an app's
 * start the migrations (on PostgreSQL they run at start as ever).
 */
export async function freshDatabase (t: Test, { migrated = true } = {}): Promise<Record<string, string>> {
  if (process.env.DB_ENGINE !== 'postgres') {
    const folder = await mkdtemp(join(DATABASE_FOLDERS, 'authgate-test-'))
    // Teardowns run last-registered first: the app closes before its folder goes.
    t.teardown(() => rm(folder, { recursive: true, force: true }))
    // Without the templates (a test file run by node alone), PGlite runs initdb itself and the
    // start migrates. cpSync: a thousand small files, which fs.promises.cp copies fifteen times
    // slower (400 ms to 25).
    const template = migrated ? PGLITE_MIGRATED_TEMPLATE : PGLITE_TEMPLATE
    if (existsSync(template)) cpSync(template, pgliteDataDir(folder), { recursive: true })
    return { DB_ENGINE: 'pglite', DB_NAME: folder }
  }
  const base = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
  const name = `authgate_test_${randomBytes(6).toString('hex')}`
  const admin = new pg.Client({ connectionString: base })
  await admin.connect()
  await admin.query(`create database ${name}`)
  await admin.end()
  t.teardown(async () => {
    const cleanup = new pg.Client({ connectionString: base })
    await cleanup.connect()
    await cleanup.query(`drop database if exists ${name} with (force)`)
    await cleanup.end()
  })
  const url = new URL(base)
  url.pathname = `/${name}`
  return { DB_ENGINE: 'postgres', DATABASE_URL: url.toString() }
}

export interface BuildOptions {
  /** Variables over the test defaults; undefined removes one. */
  env?: Record<string, string | undefined>
  clock?: TestClock
  /** The database variables, to share one database between apps; a fresh one when absent. */
  database?: Record<string, string>
  /** Collects the app's log lines (level info) instead of discarding them. */
  logLines?: string[]
  /** Parts of the services put in place of the built ones (a mailer). */
  overrides?: AppOptions['overrides']
}

/** The app as production builds it, on a fresh database, closed when the test ends. */
export async function build (t: Test, { env = {}, clock = new TestClock(), database, logLines, overrides }: BuildOptions = {}): Promise<FastifyInstance> {
  const fullEnv = Object.fromEntries(Object.entries({
    NODE_ENV: 'test',
    SECRET_KEY,
    BCRYPT_COST: '4',
    // On for the tests of limits, which set it; the other tests make many requests from one address.
    RATE_LIMIT_ENABLED: 'false',
    LOG_LEVEL: logLines === undefined ? 'silent' : 'info',
    ...database ?? await freshDatabase(t),
    ...env
  }).filter(([, value]) => value !== undefined))
  const config = await loadConfig(fullEnv)
  const options = serverOptions(config)
  if (logLines !== undefined) {
    options.logger = { ...options.logger as object, stream: { write: (line: string) => { logLines.push(line) } } }
  }
  const fastify = Fastify(options)
  t.teardown(() => fastify.close())
  // fp: the tests reach the app's decorators (db, keyring) as fastify-cli's helper does.
  await fastify.register(fp(app), { config, clock, overrides })
  await fastify.ready()
  return fastify
}

/**
 * The environment of a `node src/server.ts` process (test/server-process.ts) on `database`: as
 * the tests' apps are (bcrypt cost 4, no rate limits), with no drain on SIGTERM, on a port the
 * system chooses (logged at info); `env` over it.
 */
export function serverEnv (database: Record<string, string>, env: Record<string, string> = {}): Record<string, string> {
  // The run's own database variables give way to `database`'s: DATABASE_URL means PostgreSQL.
  const { DB_ENGINE: _engine, DATABASE_URL: _url, ...inherited } = process.env as Record<string, string>
  return {
    ...inherited,
    ...database,
    // Required in production; the tests' servers are reached at 127.0.0.1 on a port of the system's choosing.
    PUBLIC_URL: 'http://localhost',
    SECRET_KEY,
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'info',
    BCRYPT_COST: '4',
    RATE_LIMIT_ENABLED: 'false',
    SHUTDOWN_DRAIN_DELAY: '0',
    ...env
  }
}

/** Another PostgreSQL client, in a transaction holding the row of session `sid` locked until it ends. */
export async function lockSession (t: Test, databaseUrl: string, sid: string): Promise<pg.Client> {
  const blocker = new pg.Client({ connectionString: databaseUrl })
  await blocker.connect()
  t.teardown(() => blocker.end())
  await blocker.query('begin')
  await blocker.query('select id from sessions where id = $1 for update', [sid])
  return blocker
}

/**
 * Reads which backends of `databaseUrl`'s database wait on a row's lock (their process ids),
 * with `query` narrowing them by their statement (an ILIKE pattern). It reads from a connection
 * of its own, in no transaction: within a transaction pg_stat_activity's rows (which backends,
 * their statements) are the snapshot of its first read, and only the wait event is read afresh,
 * so a backend that connected after that read never shows, however long it waits. Row locks
 * only (a transaction's id, a tuple): a commit that notifies (the app's own heartbeat, every
 * 250 ms) waits for a moment on the server-wide lock of the notification queue, an `object`.
 */
export async function lockWaiters (t: Test, databaseUrl: string): Promise<(query?: string) => Promise<number[]>> {
  const watcher = new pg.Client({ connectionString: databaseUrl })
  await watcher.connect()
  t.teardown(() => watcher.end())
  return async (query = '%') => (await watcher.query<{ pid: number }>(
    "select pid from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and wait_event in ('transactionid', 'tuple') and query ilike $1 order by pid",
    [query])).rows.map((row) => row.pid)
}

let counter = 0
/** A username and email no other test uses. */
export function uniqueUser (prefix = 'user'): { username: string, email: string, password: string } {
  const id = `${prefix}${process.pid}x${++counter}`
  return { username: id, email: `${id}@example.com`, password: 'correct horse battery staple' }
}

export function postJson (fastify: FastifyInstance, url: string, payload: unknown, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return fastify.inject({ method: 'POST', url, payload: payload as object, headers: { 'content-type': 'application/json', ...headers } })
}

export async function register (fastify: FastifyInstance, user = uniqueUser()): Promise<{ id: number, username: string, email: string, password: string }> {
  const res = await postJson(fastify, '/api/auth/register', user)
  if (res.statusCode !== 201) throw new Error(`register failed: ${res.statusCode} ${res.body}`)
  return { ...user, id: res.json().user.id }
}

export async function login (fastify: FastifyInstance, user?: { username: string, password: string }): Promise<{ access: string, refresh: string, user: { id: number, username: string, email: string, password: string } }> {
  const registered = user === undefined ? await register(fastify) : { ...uniqueUser(), ...user, id: 0 }
  const res = await postJson(fastify, '/api/auth/login', { identifier: registered.username, password: registered.password })
  if (res.statusCode !== 200) throw new Error(`login failed: ${res.statusCode} ${res.body}`)
  return { ...res.json(), user: registered }
}

/**
 * The Cookie header a browser sends to the refresh endpoint after a sign-in of this test
 * configuration (COOKIE_SECURE, no domain): the refresh token, and the binding to its host.
 */
export function refreshCookie (refresh: string): string {
  const binding = createHmac('sha256', subkey(SECRET_KEY, 'refresh-binding')).update(String(claimsOf(refresh).sid)).digest('base64url')
  return `__Secure-refresh_token=${refresh}; __Host-refresh_binding=${binding}`
}

/** The claims of a JWT, without verifying it. */
export function claimsOf (token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString())
}

export const ALL_ADMIN_SCOPES = ['admin:users:read', 'admin:users:write', 'admin:sessions', 'admin:audit:read']

/** The Authorization header of HTTP Basic client authentication. */
export const basic = (id: string, secret: string): string => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`

/** A form POST as OAuth clients send one (each value of a list a parameter of its own). */
export function postForm (app: FastifyInstance, url: string, fields: Record<string, string | string[]>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  const params = new URLSearchParams()
  for (const [name, value] of Object.entries(fields)) for (const one of [value].flat()) params.append(name, one)
  return app.inject({ method: 'POST', url, payload: params.toString(), headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers } })
}

/** The headers of a request made with `token` (RFC 6750 §2.1). */
export const bearer = (token: string): { authorization: string } => ({ authorization: `Bearer ${token}` })

/** A service client of `audience` (the admin API's by default) with `scopes`, and a token of it. */
export async function operator (app: FastifyInstance, scopes = ALL_ADMIN_SCOPES, audience = app.config.adminAudience, tokenTtlS = 600): Promise<{ id: string, token: string }> {
  const { client, secret } = await app.clients.create({ name: 'ops', scopes, audiences: [audience], tokenTtlS })
  const res = await app.inject({ method: 'POST', url: '/oauth/token', payload: 'grant_type=client_credentials', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(client.id, secret) } })
  return { id: client.id, token: res.json().access_token as string }
}

/**
 * The audit trail of user `userId` as far as the app has recorded it (its buffer written first),
 * oldest first: `columns` of each event, of the events named `event` (a LIKE pattern where it
 * holds `%`) and of `outcome`, where given.
 */
export async function auditEvents<C extends keyof AuditEventsTable> (app: FastifyInstance, userId: number, columns: readonly C[], { event, outcome }: { event?: string, outcome?: 'success' | 'failure' } = {}) {
  await app.audit.flush()
  let query = app.db.selectFrom('audit_events').select(columns).where('user_id', '=', userId)
  if (event !== undefined) query = query.where('event', event.includes('%') ? 'like' : '=', event)
  if (outcome !== undefined) query = query.where('outcome', '=', outcome)
  return await query.orderBy('id').execute()
}

/**
 * Waits for `check` to hold, asking again every `everyMs`, and says whether it did: a wait for
 * something to happen, never a measure of how soon. `withinMs` only ends a hang with a failure
 * that names it, far above any slow run: no test asserts a wall-clock time (issue 26).
 */
export async function eventually (check: () => boolean | Promise<boolean>, { withinMs = 30_000, everyMs = 10 } = {}): Promise<boolean> {
  const giveUpAt = Date.now() + withinMs
  for (;;) {
    if (await check()) return true
    if (Date.now() > giveUpAt) return false
    await sleep(everyMs)
  }
}

/**
 * Whether the server at `base` answers /health/ready 200 within `eventually`'s time. Its
 * database ping has 500 ms (routes/health.ts), which a machine loaded past its cores can exceed:
 * then readiness says 503, rightly, and a later try passes.
 */
export async function becomesReady (base: string): Promise<boolean> {
  return await eventually(async () => (await fetch(`${base}/health/ready`)).status === 200)
}

/**
 * Runs `statement` in a transaction with the trigger that tells the replicas of a change of
 * `table` (migrations 0004, 0006, 0008) off: a change no replica hears of, so a replica whose
 * cache holds the row answers as before until the entry ages out. A witness, for a test across
 * processes, that a cache was still in use and fresh when a change it was told of was honoured.
 */
export async function unheard (databaseUrl: string, table: 'sessions' | 'users' | 'oauth_clients', statement: string, params: unknown[] = []): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    const trigger = client.escapeIdentifier(`${table}_notify`)
    await client.query('begin')
    await client.query(`alter table ${table} disable trigger ${trigger}`)
    await client.query(statement, params)
    // Back as the migrations leave it: ALWAYS, so that a replication role fires it too.
    await client.query(`alter table ${table} enable always trigger ${trigger}`)
    await client.query('commit')
  } finally {
    await client.end()
  }
}

/** How many answers had each status and code (`400 mfa_code_invalid`, `200`): what requests sent at once got. */
export function tally (answers: LightMyRequestResponse[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const res of answers) {
    const key = res.statusCode < 300 ? String(res.statusCode) : `${res.statusCode} ${res.json().code as string}`
    counts[key] = (counts[key] ?? 0) + 1
  }
  return counts
}
