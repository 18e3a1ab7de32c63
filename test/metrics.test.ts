import t from 'tap'
import { build, login, postJson } from './helper.ts'

const METRICS_TOKEN = 'metrics-token-for-the-tests-0123456789'

/** The value of one sample line, `name{labels} value`. */
function sample (text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels === '' ? '' : `{${labels}}`} `))
  return line === undefined ? undefined : Number(line.split(' ').at(-1))
}

t.test('without METRICS_TOKEN there is no /metrics', async (t) => {
  const app = await build(t)
  const res = await app.inject({ url: '/metrics' })
  t.equal(res.statusCode, 404)
})

t.test('/metrics answers only its token, as Bearer', async (t) => {
  const app = await build(t, { env: { METRICS_TOKEN } })
  for (const authorization of [undefined, 'Bearer wrong-token', `Basic ${METRICS_TOKEN}`, `Bearer ${METRICS_TOKEN}x`]) {
    const res = await app.inject({ url: '/metrics', headers: authorization === undefined ? {} : { authorization } })
    t.equal(res.statusCode, 401, String(authorization))
    t.match(res.headers['content-type'], /^application\/problem\+json/)
    t.match(res.headers['www-authenticate'], /^Bearer /)
  }
})

t.test('guessing the metrics token is rate limited per client IP', async (t) => {
  const app = await build(t, { env: { METRICS_TOKEN, RATE_LIMIT_ENABLED: 'true', RATE_LIMIT_CREDENTIALS_MAX: '3' } })
  const statuses = []
  for (let i = 0; i < 4; i++) statuses.push((await app.inject({ url: '/metrics', headers: { authorization: `Bearer guess-${i}` } })).statusCode)
  t.same(statuses, [401, 401, 401, 429])
})

t.test('latency by route, security events, tokens issued, rate-limited requests and the process', async (t) => {
  const app = await build(t, { env: { METRICS_TOKEN, AUTH_REUSE_GRACE_S: '0', RATE_LIMIT_ENABLED: 'true', RATE_LIMIT_NOT_FOUND_MAX: '1' } })
  const { access, refresh, user } = await login(app)
  await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })
  await postJson(app, '/api/auth/login', { identifier: user.username, password: 'not the right one' })
  await postJson(app, '/api/token/refresh', { refresh })
  await postJson(app, '/api/token/refresh', { refresh })
  await app.inject({ url: '/nope' })
  await app.inject({ url: '/nope' })

  const res = await app.inject({ url: '/metrics', headers: { authorization: `Bearer ${METRICS_TOKEN}` } })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain/)
  const text = res.body
  t.equal(sample(text, 'http_request_duration_seconds_count', 'method="GET",route="/api/detail",status_code="200"'), 1, 'detail latency')
  t.equal(sample(text, 'authgate_events_total', 'event="login",outcome="success"'), 1)
  t.equal(sample(text, 'authgate_events_total', 'event="login",outcome="failure"'), 1)
  t.equal(sample(text, 'authgate_events_total', 'event="refresh",outcome="success"'), 1)
  t.equal(sample(text, 'authgate_events_total', 'event="reuse_detected",outcome="failure"'), 1)
  t.equal(sample(text, 'authgate_tokens_issued_total', 'type="access"'), 2, 'login and refresh')
  t.equal(sample(text, 'authgate_tokens_issued_total', 'type="refresh"'), 2)
  t.equal(sample(text, 'authgate_rate_limited_total', 'route="/nope"') ?? sample(text, 'authgate_rate_limited_total', 'route="unknown"'), 1)
  t.ok((sample(text, 'process_resident_memory_bytes') ?? 0) > 0, "Node's own metrics")
  if (process.env.DB_ENGINE === 'postgres') {
    t.ok((sample(text, 'authgate_db_pool_connections', 'state="total"') ?? 0) >= 1, 'pool usage')
    t.equal(sample(text, 'authgate_db_pool_connections', 'state="waiting"'), 0)
  }
  t.equal(sample(text, 'authgate_refresh_rotations', 'state="waiting"'), 0, 'no refresh waits for a commit')
  t.equal(sample(text, 'authgate_refresh_rotations', 'state="running"'), 0)
  t.equal(sample(text, 'authgate_password_hashing', 'state="waiting"'), 0, 'no password check waits for a slot')
  t.equal(sample(text, 'authgate_password_hashing', 'state="running"'), 0)
  t.ok((sample(text, 'authgate_password_hashing', 'state="allowed"') ?? 0) >= 1, 'a hashing may run')
  t.notOk(text.includes(access), 'no token in the metrics')
})

t.test('two apps in one process keep their own counts', async (t) => {
  const one = await build(t, { env: { METRICS_TOKEN } })
  const two = await build(t, { env: { METRICS_TOKEN } })
  await login(one)
  const scrape = async (app: typeof one) => (await app.inject({ url: '/metrics', headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).body
  t.equal(sample(await scrape(one), 'authgate_events_total', 'event="login",outcome="success"'), 1)
  t.equal(sample(await scrape(two), 'authgate_events_total', 'event="login",outcome="success"'), undefined)
})
