import t from 'tap'
import { build } from './helper.ts'

t.test('health', async (t) => {
  const app = await build(t)

  t.test('live and ready answer 200, with and without the slash', async (t) => {
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

  t.test('ready answers 503 while the database is unreachable; live stays 200', async (t) => {
    await app.db.destroy()
    const res = await app.inject({ url: '/health/ready' })
    t.equal(res.statusCode, 503)
    t.match(res.json(), { status: 503, code: 'service_unavailable' })
    t.equal((await app.inject({ url: '/health/live' })).statusCode, 200)
  })
})

t.test('a database connection lost mid-transaction answers 503 and the service lives on', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'PGlite runs in the process: it has no connection to lose'
}, async (t) => {
  const { default: pg } = await import('pg')
  const { freshDatabase, login, postJson, claimsOf } = await import('./helper.ts')
  const database = await freshDatabase(t)
  const app = await build(t, { database })
  const { refresh } = await login(app)

  // Another client holds the session row, so the refresh waits inside its transaction...
  const blocker = new pg.Client({ connectionString: database.DATABASE_URL })
  await blocker.connect()
  t.teardown(() => blocker.end())
  await blocker.query('begin')
  await blocker.query('select id from sessions where id = $1 for update', [claimsOf(refresh).sid])
  const pending = postJson(app, '/api/token/refresh', { refresh })

  // ...where its server connection is killed, as a restart or failover would.
  let killed = 0
  for (let i = 0; i < 100 && killed === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    const { rows } = await blocker.query(
      "select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and pid <> pg_backend_pid()")
    killed = rows.length
  }
  t.equal(killed, 1, 'the waiting backend was terminated')
  const res = await pending
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'service_unavailable')
  await blocker.query('rollback')

  const retry = await postJson(app, '/api/token/refresh', { refresh })
  t.equal(retry.statusCode, 200, 'the pool reconnects and the token, never rotated, still refreshes')
})
