import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { isUnavailable } from '../src/db/index.ts'
import { DatabaseUnavailableError } from '../src/errors.ts'
import { SessionCache } from '../src/services/sessions/cache.ts'
import { build, claimsOf, eventually, freshDatabase, login, postJson } from './helper.ts'
import { proxyDatabase } from './tcp-proxy.ts'

// The database layer's own 503: its timeouts and connection errors end a request before the
// route's deadline (handlerTimeout), whose 503 says that the request took too long.
const DATABASE_UNAVAILABLE = new DatabaseUnavailableError().message

function assertUnavailable (t: Test, res: LightMyRequestResponse, what: string): void {
  t.equal(res.statusCode, 503, `${what}: 503`)
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8', `${what}: problem+json`)
  t.match(res.json(), { status: 503, code: 'service_unavailable', detail: DATABASE_UNAVAILABLE }, `${what}: the error shape, from the database layer before the request deadline`)
}

/** Whether readiness comes to answer 200 again: a wait for the recovery, bounded only against a hang. */
const recovered = (app: FastifyInstance): Promise<boolean> =>
  eventually(async () => (await app.inject({ url: '/health/ready' })).statusCode === 200, { everyMs: 100 })

t.test('a database outage answers 503 at once and recovers without a restart', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'PGlite runs in the process: it cannot become unreachable'
}, async (t) => {
  const database = await freshDatabase(t)
  const { proxy, url: through } = await proxyDatabase(t, database.DATABASE_URL!)
  const logLines: string[] = []
  // The replica's session cache (PostgreSQL's), read by the test: it answers detail without the
  // database while heartbeats arrive, and for a second after the last (docs/operations.md).
  const sessionCache = new SessionCache()
  const app = await build(t, { database: { ...database, DATABASE_URL: through }, logLines, overrides: { sessionCache } })
  const { access, user } = await login(app)
  const sid = claimsOf(access).sid as string
  const detail = (): Promise<LightMyRequestResponse> => app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })
  const signIn = (): Promise<LightMyRequestResponse> => postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })

  const works = async (t: Test): Promise<void> => {
    t.equal((await app.inject({ url: '/health/ready' })).statusCode, 200, 'ready')
    t.equal((await detail()).statusCode, 200, 'detail')
    t.equal((await signIn()).statusCode, 200, 'login')
  }

  /**
   * During an outage: ready 503 (for the reason `readyCause`, when given); requests 503 from the
   * database layer, before their deadline, once the session cache is unused; live 200, never
   * touching the database. What each answer says is proven, not how soon it came
   * (docs/operations.md: ready within a second, which the probe's own 500 ms bound makes so).
   */
  const unavailable = async (t: Test, readyCause?: RegExp): Promise<void> => {
    const logged = logLines.length
    assertUnavailable(t, await app.inject({ url: '/health/ready' }), 'ready')
    if (readyCause !== undefined) {
      const causes = logLines.slice(logged).map((line) => JSON.parse(line)).filter((line) => line.reqId !== undefined && line.msg === 'service unavailable').map((line) => line.err.message as string)
      t.equal(causes.length, 1, `ready's 503 logged once: ${causes.join(' | ')}`)
      t.match(causes[0], readyCause, 'ready: for the reason expected')
    }
    t.equal((await app.inject({ url: '/health/live' })).statusCode, 200, 'live stays 200')
    // A lost listener leaves it unused at once, a silent one a second after its last heartbeat:
    // until then detail may be answered from it, as designed.
    t.ok(await eventually(() => !sessionCache.live), 'the session cache goes unused: no heartbeat arrives')
    const [byDetail, byLogin] = await Promise.all([detail(), signIn()])
    assertUnavailable(t, byDetail, 'detail')
    assertUnavailable(t, byLogin, 'login')
  }

  await works(t)

  t.test('connections dropped and refused', async (t) => {
    await proxy.close()
    // Answered by the refused connection, or by the probe's bound should this machine report the
    // refusal later than that: either is in time.
    await unavailable(t)
    await proxy.reopen()
    t.ok(await recovered(app), 'ready again once the database came back')
    await works(t)
  })

  t.test('connections that hang', async (t) => {
    // The session in the cache, so that detail could answer 200 without the database: so it is
    // whenever the recovery above takes long enough (a loaded machine) for the listener to return.
    t.ok(await eventually(async () => (await detail()).statusCode === 200 && sessionCache.of(sid, user.id) !== undefined), 'the session is in the cache')
    proxy.pause()
    // The probe's own bound, not the pool's connect (3 s) or query (6 s) timeout.
    await unavailable(t, /no answer within 500 ms$/)
    proxy.resume()
    t.ok(await recovered(app), 'ready again once the network came back')
    await works(t)
  })

  t.test('lost idle connections are logged, never fatal', async (t) => {
    // Idle pooled connections cut under the pool: it replaces them on the next request.
    await proxy.close()
    await proxy.reopen()
    t.ok(await recovered(app), 'ready again')
    await works(t)
    t.ok(logLines.some((line) => JSON.parse(line).msg === 'idle database connection lost'), 'a warning for each lost connection')
  })
})

t.test('what counts as the database being unavailable', async (t) => {
  const withCode = (code: string): Error => Object.assign(new Error(code), { code })
  for (const code of ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', '08006', '57P01', '57P03', '53300', '57014']) {
    t.equal(isUnavailable(withCode(code)), true, code)
  }
  t.equal(isUnavailable(new Error('Connection terminated unexpectedly')), true, 'a connection error without a code')
  for (const code of ['23505', '42P01', '3D000', '28P01', 'XX000']) t.equal(isUnavailable(withCode(code)), false, code)
  t.equal(isUnavailable(new TypeError('a bug')), false, 'a bug is not an outage')
})
