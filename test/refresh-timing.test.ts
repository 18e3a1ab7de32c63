import t from 'tap'
import { bearer, build, claimsOf, freshDatabase, lockSession, login, postJson, serverEnv } from './helper.ts'
import { startServer } from './server-process.ts'
import { proxyDatabase } from './tcp-proxy.ts'

const onPostgres = process.env.DB_ENGINE === 'postgres'

t.test('with the grace off, exactly one of concurrent refreshes of one token succeeds', async (t) => {
  const app = await build(t, { env: { AUTH_REUSE_GRACE_S: '0' } })
  for (let round = 0; round < 5; round++) {
    const { refresh } = await login(app)
    const results = await Promise.all(Array.from({ length: 10 }, () => postJson(app, '/api/token/refresh', { refresh })))
    t.equal(results.filter((r) => r.statusCode === 200).length, 1, `round ${round}: one 200`)
    t.ok(results.every((r) => r.statusCode === 200 || r.statusCode === 401), 'the others 401')
  }
})

t.test('the grace counts from when the rotation happened in the database, not from when the request arrived', {
  skip: !onPostgres && 'another connection holding the row lock needs PostgreSQL'
}, async (t) => {
  const database = await freshDatabase(t)
  const app = await build(t, { database, env: { AUTH_REUSE_GRACE_S: '1' } })
  const { refresh } = await login(app)
  // Another transaction holds the session row: the refresh waits inside its own.
  const blocker = await lockSession(t, database.DATABASE_URL!, claimsOf(refresh).sid as string)
  const first = postJson(app, '/api/token/refresh', { refresh })
  // It waits past the whole grace: counted from its arrival, the grace would be over.
  await new Promise((resolve) => setTimeout(resolve, 1200))
  const { rows: [{ released }] } = await blocker.query('select clock_timestamp() as released')
  await blocker.query('commit')
  const firstRes = await first
  t.equal(firstRes.statusCode, 200)
  const { used_at: usedAt } = await app.db.selectFrom('refresh_tokens').select('used_at')
    .where('jti', '=', claimsOf(refresh).jti as string).executeTakeFirstOrThrow()
  t.ok(usedAt !== null && usedAt >= released, 'the token was used once the lock was released, on the database clock')
  // The client, having lost that answer, retries at once: within the grace of the rotation.
  const retry = await postJson(app, '/api/token/refresh', { refresh })
  t.equal(retry.statusCode, 200, 'a retry within the grace of the commit')
  t.same(retry.json(), firstRes.json(), 'gets the same pair')
  t.equal((await app.inject({ url: '/api/detail', headers: bearer(retry.json().access) })).statusCode, 200, 'the session lives on')
})

t.test('a stalled database: the client gets a 503 problem before its socket is cut, and its retry succeeds', {
  skip: !onPostgres && 'PGlite runs in the process: no network to stall'
}, async (t) => {
  const database = await freshDatabase(t)
  const { proxy, url: through } = await proxyDatabase(t, database.DATABASE_URL!)
  const server = startServer(serverEnv({ ...database, DATABASE_URL: through }))
  t.teardown(() => { server.child.kill('SIGKILL') })
  const base = await server.listening
  const post = (path: string, body: unknown) => fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const user = { username: `stall${process.pid}`, email: `stall${process.pid}@example.com`, password: 'correct horse battery staple' }
  t.equal((await post('/api/auth/register', user)).status, 201)
  const { refresh } = await (await post('/api/auth/login', { identifier: user.username, password: user.password })).json() as { refresh: string }

  proxy.pause()
  const started = Date.now()
  const stalled = await post('/api/token/refresh', { refresh })
  const waited = Date.now() - started
  t.equal(stalled.status, 503, `answered, after ${waited} ms`)
  t.equal(stalled.headers.get('content-type'), 'application/problem+json; charset=utf-8')
  t.match(await stalled.json(), { status: 503, code: 'service_unavailable' })
  // A 503 at all is the proof it came before the socket's idle timeout (10 s), which would have
  // cut the connection without an answer; no test asserts a wall-clock time.

  proxy.resume()
  let retry = await post('/api/token/refresh', { refresh })
  // The pool may first have to find its stalled connections gone.
  for (let i = 0; i < 20 && retry.status === 503; i++) retry = await post('/api/token/refresh', { refresh })
  t.equal(retry.status, 200, 'the retry refreshes: the stalled attempt did not count as reuse')
  const pair = await retry.json() as { access: string }
  const detail = await fetch(`${base}/api/detail`, { headers: bearer(pair.access) })
  t.equal(detail.status, 200, 'and the session is alive')
  t.equal(await server.stop(), 0)
})
