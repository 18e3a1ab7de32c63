import t from 'tap'
import { build, claimsOf, eventually, freshDatabase, lockSession, lockWaiters, login, postJson } from './helper.ts'
import { proxyDatabase } from './tcp-proxy.ts'
import type pg from 'pg'
import { forKysely } from '../src/db/connections.ts'

t.test('health', async (t) => {
  const app = await build(t)

  t.test('live and ready answer 200, with and without the slash', async (t) => {
    // The first readiness may open the pool's first connection, which a machine loaded past
    // its cores may not do within the ping's 500 ms: then it answers 503, rightly.
    t.ok(await eventually(async () => (await app.inject({ url: '/health/ready' })).statusCode === 200), 'ready')
    for (const url of ['/health/live', '/health/ready', '/health/live/', '/health/ready/']) {
      const res = await app.inject({ url })
      t.equal(res.statusCode, 200, url)
      t.same(res.json(), { status: 'ok' })
    }
  })

  t.test('every answer carries the security headers', async (t) => {
    const res = await app.inject({ url: '/health/live' })
    t.equal(res.headers['x-content-type-options'], 'nosniff')
    t.equal(res.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'")
    t.equal(res.headers['x-frame-options'], 'SAMEORIGIN')
  })

  t.test('probes log nothing at LOG_LEVEL=silent or below warn', async (t) => {
    const logLines: string[] = []
    const quiet = await build(t, { logLines, env: { LOG_LEVEL: 'error' } })
    t.equal(quiet.config.logLevel, 'error')
    await quiet.inject({ url: '/health/live' })
    t.same(logLines.filter((l) => JSON.parse(l).level < 50), [], 'nothing under error')
  })
})

t.test('ready answers 503 while the database is unreachable, live stays 200, and both recover', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'PGlite runs in the process: it cannot become unreachable'
}, async (t) => {
  const database = await freshDatabase(t)
  const { proxy, url } = await proxyDatabase(t, database.DATABASE_URL!)
  const app = await build(t, { database: { ...database, DATABASE_URL: url } })
  // As above: the first readiness opens the pool's first connection.
  t.ok(await eventually(async () => (await app.inject({ url: '/health/ready' })).statusCode === 200), 'ready while the database answers')
  await proxy.close()
  const res = await app.inject({ url: '/health/ready' })
  t.equal(res.statusCode, 503)
  t.match(res.json(), { status: 503, code: 'service_unavailable', detail: 'The database is unavailable; try again shortly.' })
  t.equal((await app.inject({ url: '/health/live' })).statusCode, 200)
})

t.test('a database connection lost mid-transaction answers 503 and the service lives on', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'PGlite runs in the process: it has no connection to lose'
}, async (t) => {
  const database = await freshDatabase(t)
  const app = await build(t, { database })
  const { refresh } = await login(app)

  // Another client holds the session row, so the refresh waits inside its transaction...
  const blocker = await lockSession(t, database.DATABASE_URL!, claimsOf(refresh).sid as string)
  const waiters = await lockWaiters(t, database.DATABASE_URL!)
  t.same(await waiters(), [], 'nothing waits before the refresh')
  const pending = postJson(app, '/api/token/refresh', { refresh })
  let waiting: number[] = []
  t.ok(await eventually(async () => (waiting = await waiters()).length === 1), 'the refresh waits on the session row')

  // ...where its server connection is killed, as a restart or failover would.
  t.same((await blocker.query('select pg_terminate_backend($1) as ended', waiting)).rows, [{ ended: true }], 'its backend is terminated')
  const res = await pending
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'service_unavailable')
  await blocker.query('rollback')

  const retry = await postJson(app, '/api/token/refresh', { refresh })
  t.equal(retry.statusCode, 200, 'the pool reconnects and the token, never rotated, still refreshes')
})

t.test('a client whose connection died under a query is destroyed, never handed to the next request', async (t) => {
  const released: unknown[] = []
  let failWith: Record<string, unknown> = {}
  // A new client each time, as a pool hands out after it destroyed the last.
  const client = () => ({
    query: async () => { throw Object.assign(new Error('the query failed'), failWith) },
    release: (destroy?: unknown) => { released.push(destroy) }
  })
  const pool = forKysely({ connect: async () => client(), options: {}, end: async () => {} } as unknown as pg.Pool)
  for (const [why, error] of [
    ['terminated by an administrator (a restart, a failover)', { code: '57P01' }],
    ['a connection failure', { code: '08006' }],
    ['no word from the server: reset, closed, timed out', {}],
    ['a statement timeout: the connection lives', { code: '57014' }],
    ['a unique violation: the connection lives', { code: '23505' }]
  ] as const) {
    failWith = error
    const c = await pool.connect()
    await (c.query as unknown as (text: string) => Promise<unknown>)('select 1').catch(() => {})
    c.release()
    t.equal(released.pop(), 'code' in error && ['57014', '23505'].includes(error.code) ? undefined : true, why)
  }
})
