import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { serverOptions } from '../src/app.ts'
import { isUnavailable } from '../src/db/index.ts'
import { build, freshDatabase, login, postJson } from './helper.ts'
import { proxyDatabase } from './tcp-proxy.ts'

/** The answer and how long it took. */
async function timed (request: Promise<LightMyRequestResponse>): Promise<{ res: LightMyRequestResponse, ms: number }> {
  const started = Date.now()
  const res = await request
  return { res, ms: Date.now() - started }
}

function assertUnavailable (t: Test, res: LightMyRequestResponse, what: string): void {
  t.equal(res.statusCode, 503, `${what}: 503`)
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8', `${what}: problem+json`)
  t.match(res.json(), { status: 503, code: 'service_unavailable', detail: String }, `${what}: the error shape`)
}

/** Polls readiness until it answers 200; the time it took, or undefined after `withinMs`. */
async function recovery (app: FastifyInstance, withinMs: number): Promise<number | undefined> {
  const started = Date.now()
  while (Date.now() - started < withinMs) {
    if ((await app.inject({ url: '/health/ready' })).statusCode === 200) return Date.now() - started
    await sleep(100)
  }
  return undefined
}

// handlerTimeout: the deadline past which no request may hang.
const { handlerTimeout } = serverOptions({ trustProxy: false, logLevel: 'silent', dbStartTimeoutS: 0 })

t.test('a database outage answers 503 at once and recovers without a restart', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'PGlite runs in the process: it cannot become unreachable'
}, async (t) => {
  const database = await freshDatabase(t)
  const { proxy, url: through } = await proxyDatabase(t, database.DATABASE_URL!)
  const logLines: string[] = []
  const app = await build(t, { database: { ...database, DATABASE_URL: through }, logLines })
  const { access, user } = await login(app)
  const detail = (): Promise<LightMyRequestResponse> => app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })
  const signIn = (): Promise<LightMyRequestResponse> => postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })

  const works = async (t: Test): Promise<void> => {
    t.equal((await app.inject({ url: '/health/ready' })).statusCode, 200, 'ready')
    t.equal((await detail()).statusCode, 200, 'detail')
    t.equal((await signIn()).statusCode, 200, 'login')
  }

  /** During an outage: ready 503 within a second, requests 503 before their deadline, live 200. */
  const unavailable = async (t: Test): Promise<void> => {
    const ready = await timed(app.inject({ url: '/health/ready' }))
    assertUnavailable(t, ready.res, 'ready')
    t.ok(ready.ms < 1000, `ready answered in ${ready.ms} ms`)
    const live = await timed(app.inject({ url: '/health/live' }))
    t.equal(live.res.statusCode, 200, 'live stays 200')
    t.ok(live.ms < 1000, `live answered in ${live.ms} ms`)
    const [byDetail, byLogin] = await Promise.all([timed(detail()), timed(signIn())])
    for (const [what, { res, ms }] of [['detail', byDetail], ['login', byLogin]] as const) {
      assertUnavailable(t, res, what)
      t.ok(ms < handlerTimeout!, `${what} answered in ${ms} ms, before the request deadline`)
    }
  }

  await works(t)

  t.test('connections dropped and refused', async (t) => {
    await proxy.close()
    await unavailable(t)
    await proxy.reopen()
    const took = await recovery(app, 10_000)
    t.ok(took !== undefined, `ready again ${took} ms after the database came back`)
    await works(t)
  })

  t.test('connections that hang', async (t) => {
    proxy.pause()
    await unavailable(t)
    proxy.resume()
    const took = await recovery(app, 10_000)
    t.ok(took !== undefined, `ready again ${took} ms after the network came back`)
    await works(t)
  })

  t.test('lost idle connections are logged, never fatal', async (t) => {
    // Idle pooled connections cut under the pool: it replaces them on the next request.
    await proxy.close()
    await proxy.reopen()
    const took = await recovery(app, 10_000)
    t.ok(took !== undefined, 'ready again')
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
