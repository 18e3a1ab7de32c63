import type { LightMyRequestResponse } from 'fastify'
import { randomInt } from 'node:crypto'
import t, { type Test } from 'tap'
import { build, eventually, freshDatabase, login, postJson, register, uniqueUser } from './helper.ts'
import { assert as assertPasskey, register as createPasskey } from './soft-authenticator.ts'
import { startProxy } from './tcp-proxy.ts'

const REDIS_URL = 'redis://127.0.0.1:6379'
const limits = { RATE_LIMIT_ENABLED: 'true' }
// An address of its own per test and run: counts kept in the shared Redis never meet.
const someIp = (): string => `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`

function assertLimited (t: Test, res: LightMyRequestResponse, oauth = false): void {
  t.equal(res.statusCode, 429)
  if (oauth) {
    // An OAuth endpoint: RFC 6749's shape, which its clients read.
    t.match(res.headers['content-type'], /^application\/json/)
    t.match(res.json(), { error: 'temporarily_unavailable', error_description: /^Too many requests; try again in \d+ seconds\.$/ })
  } else {
    t.match(res.headers['content-type'], /^application\/problem\+json/)
    t.match(res.json(), { status: 429, code: 'rate_limited', detail: /^Too many requests; try again in \d+ seconds\.$/ })
  }
  t.ok(Number(res.headers['retry-after']) >= 1 && Number(res.headers['retry-after']) <= 60, `Retry-After ${String(res.headers['retry-after'])}`)
}

t.test('login is limited per client IP, then per account from any IP; no lockout of the owner', async (t) => {
  const app = await build(t, { env: { ...limits, TRUST_PROXY: '127.0.0.1', RATE_LIMIT_CREDENTIALS_MAX: '3', RATE_LIMIT_IDENTIFIER_MAX: '4' } })
  const user = await register(app)
  const attempt = (ip: string, identifier: string, password = 'not the password at all') =>
    postJson(app, '/api/auth/login', { identifier, password }, { 'x-forwarded-for': ip })

  // One IP spraying many accounts: the fourth attempt is refused, whatever the account.
  const sprayer = someIp()
  for (let i = 0; i < 3; i++) t.equal((await attempt(sprayer, `nobody${i}`)).statusCode, 401)
  assertLimited(t, await attempt(sprayer, 'nobody-else'))

  // One account from many IPs: the fifth attempt is refused, whatever the IP.
  for (let i = 0; i < 4; i++) t.equal((await attempt(someIp(), user.username)).statusCode, 401)
  assertLimited(t, await attempt(someIp(), user.username.toUpperCase(), user.password))
  // Counted per account: its email is the same account, till the window passes.
  assertLimited(t, await attempt(someIp(), user.email.toUpperCase(), user.password))
})

t.test('an account is counted once, whichever of its names and spellings is tried, and with the password change', async (t) => {
  const app = await build(t, { env: { ...limits, TRUST_PROXY: '127.0.0.1', RATE_LIMIT_CREDENTIALS_MAX: '100', RATE_LIMIT_IDENTIFIER_MAX: '10' } })
  // JavaScript lower-cases İ to i̇ (two code points); PostgreSQL's citext to i: one account for both.
  const user = await register(app, { ...uniqueUser(), username: `istanbul${randomInt(1e9)}` })
  const { access } = (await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).json()
  const names = [user.username, user.username.replace('i', 'İ'), user.username.toUpperCase().replace('I', 'İ'), user.email, user.email.toUpperCase()]
  const statuses: number[] = []
  for (let i = 0; i < 9; i++) {
    statuses.push((await postJson(app, i % 2 === 0 ? '/api/auth/login' : '/api/token', i % 2 === 0
      ? { identifier: names[i % names.length], password: 'not the password at all' }
      : { username: names[i % names.length], password: 'not the password at all' }, { 'x-forwarded-for': someIp() })).statusCode)
  }
  t.same(statuses, Array(9).fill(401), 'nine guesses at one account over its five names and both endpoints (and the sign-in before)')
  assertLimited(t, await postJson(app, '/api/auth/login', { identifier: names[1], password: user.password }, { 'x-forwarded-for': someIp() }))
  assertLimited(t, await postJson(app, '/api/auth/password', { current_password: 'a guess at the password', new_password: 'another good passphrase' }, { authorization: `Bearer ${access}` }))
  // Unknown identifiers are counted by the name given, case-folded.
  for (let i = 0; i < 10; i++) t.equal((await postJson(app, '/api/auth/login', { identifier: i % 2 === 0 ? 'Nobody.Here' : 'nobody.here', password: 'x'.repeat(10) })).statusCode, 401)
  assertLimited(t, await postJson(app, '/api/auth/login', { identifier: 'NOBODY.HERE', password: 'x'.repeat(10) }))
})

t.test('each credential and token endpoint is limited; routes without limits are not', async (t) => {
  const app = await build(t, { env: { ...limits, RATE_LIMIT_CREDENTIALS_MAX: '2', RATE_LIMIT_TOKEN_MAX: '2', RATE_LIMIT_IDENTIFIER_MAX: '100' } })
  const { access, refresh } = await login(app)
  const bearer = { authorization: `Bearer ${access}` }
  const cases: Array<[string, unknown, Record<string, string>?]> = [
    ['/api/auth/register', uniqueUser()],
    ['/api/token', { username: 'someone', password: 'some password here' }],
    ['/api/auth/password', { current_password: 'wrong password here', new_password: 'another good password' }, bearer],
    ['/api/token/verify', { token: access }],
    ['/api/token/refresh', { refresh: 'not a token' }],
    ['/api/token/blacklist', { refresh: 'not a token' }],
    ['/api/token/introspect', { token: access }]
  ]
  for (const [url, body, headers] of cases) {
    await postJson(app, url, body, headers)
    if (url !== '/api/auth/register') await postJson(app, url, body, headers)
    else await postJson(app, url, uniqueUser(), headers)
    assertLimited(t, await postJson(app, url, body, headers), url === '/api/token/introspect')
  }
  // login was used once by the helper: a second is fine, the third is refused.
  t.equal((await postJson(app, '/api/auth/login', { identifier: 'x', password: 'some password here' })).statusCode, 401)
  assertLimited(t, await postJson(app, '/api/auth/login', { identifier: 'x', password: 'some password here' }))
  for (let i = 0; i < 5; i++) t.equal((await app.inject({ url: '/api/detail', headers: bearer })).statusCode, 200, 'detail')
  t.ok(refresh)
})

t.test('unknown paths are limited per client IP; the address follows TRUST_PROXY, never a forged header', async (t) => {
  const direct = await build(t, { env: { ...limits, RATE_LIMIT_NOT_FOUND_MAX: '2' } })
  // Without a trusted proxy, X-Forwarded-For is the client's to write: ignored.
  for (let i = 0; i < 2; i++) t.equal((await direct.inject({ url: `/nope/${i}`, headers: { 'x-forwarded-for': someIp() } })).statusCode, 404)
  assertLimited(t, await direct.inject({ url: '/nope/3', headers: { 'x-forwarded-for': someIp() } }))
  t.equal((await direct.inject({ url: '/health/live' })).statusCode, 200, 'known routes are not counted there')

  const proxied = await build(t, { env: { ...limits, RATE_LIMIT_NOT_FOUND_MAX: '2', TRUST_PROXY: '127.0.0.1' } })
  const client = someIp()
  // The proxy appends the address it saw; whatever the client put before it is not trusted.
  for (let i = 0; i < 2; i++) t.equal((await proxied.inject({ url: '/nope', headers: { 'x-forwarded-for': `${someIp()}, ${client}` } })).statusCode, 404)
  assertLimited(t, await proxied.inject({ url: '/nope', headers: { 'x-forwarded-for': `${someIp()}, ${client}` } }))
  t.equal((await proxied.inject({ url: '/nope', headers: { 'x-forwarded-for': someIp() } })).statusCode, 404, 'another client has its own count')
})

t.test('RATE_LIMIT_ENABLED=false turns every limit off', async (t) => {
  const app = await build(t, { env: { RATE_LIMIT_ENABLED: 'false', RATE_LIMIT_CREDENTIALS_MAX: '1', RATE_LIMIT_NOT_FOUND_MAX: '1' } })
  for (let i = 0; i < 4; i++) {
    t.equal((await postJson(app, '/api/auth/login', { identifier: 'x', password: 'some password here' })).statusCode, 401)
    t.equal((await app.inject({ url: '/nope' })).statusCode, 404)
  }
})

t.test('with REDIS_URL, replicas share their counts', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'replicas share a PostgreSQL (a PGlite folder has one process)'
}, async (t) => {
  const env = { ...limits, REDIS_URL, TRUST_PROXY: '127.0.0.1', RATE_LIMIT_CREDENTIALS_MAX: '100', RATE_LIMIT_IDENTIFIER_MAX: '3' }
  const database = await freshDatabase(t)
  const one = await build(t, { env, database })
  const two = await build(t, { env, database })
  const account = uniqueUser().username
  const attempt = (app: typeof one) => postJson(app, '/api/auth/login', { identifier: account, password: 'some password here' }, { 'x-forwarded-for': someIp() })
  t.equal((await attempt(one)).statusCode, 401)
  t.equal((await attempt(two)).statusCode, 401)
  t.equal((await attempt(one)).statusCode, 401)
  assertLimited(t, await attempt(two))
})

t.test('with REDIS_URL, two databases sharing a Redis never count each other\'s accounts (their ids are alike)', async (t) => {
  const env = { ...limits, REDIS_URL, TRUST_PROXY: '127.0.0.1', RATE_LIMIT_CREDENTIALS_MAX: '100', RATE_LIMIT_IDENTIFIER_MAX: '3' }
  const one = await build(t, { env })
  const two = await build(t, { env })
  const ours = await register(one)
  const theirs = await register(two)
  t.equal(ours.id, theirs.id, 'the first account of each database has the same id')
  const attempt = (app: typeof one, username: string) => postJson(app, '/api/auth/login', { identifier: username, password: 'not the password at all' }, { 'x-forwarded-for': someIp() })
  for (let i = 0; i < 3; i++) t.equal((await attempt(one, ours.username)).statusCode, 401)
  assertLimited(t, await attempt(one, ours.username))
  t.equal((await attempt(two, theirs.username)).statusCode, 401, 'the other database\'s account of the same id is not limited')
})

t.test('when Redis goes away, requests are still served, limited per replica, with a warning; it comes back', async (t) => {
  const proxy = await startProxy(6379)
  t.teardown(() => proxy.close())
  const logLines: string[] = []
  const app = await build(t, { logLines, env: { ...limits, REDIS_URL: `redis://127.0.0.1:${proxy.port}`, TRUST_PROXY: '127.0.0.1', RATE_LIMIT_NOT_FOUND_MAX: '3' } })
  const probe = (ip: string) => app.inject({ url: '/nope', headers: { 'x-forwarded-for': ip } })
  t.equal((await probe(someIp())).statusCode, 404, 'counted in Redis')

  await proxy.close()
  // Redis stays away until these four are answered: a request that waited for it would never
  // be, and the wait gives up (30 s) only to end that hang.
  const ip = someIp()
  const answers: LightMyRequestResponse[] = []
  let answered = false
  const probing = (async () => { for (let i = 0; i < 4; i++) answers.push(await probe(ip)) })().finally(() => { answered = true })
  t.ok(await eventually(() => answered), 'all four answered while Redis is away: no request waits on it')
  await probing
  for (const res of answers.slice(0, 3)) t.equal(res.statusCode, 404, 'served without Redis')
  assertLimited(t, answers[3]!)
  const warnings = logLines.map((line) => JSON.parse(line)).filter((e) => e.level === 40 && /Redis does not answer/.test(e.msg))
  t.equal(warnings.length, 1, 'one warning, not one per request')

  await proxy.reopen()
  t.ok(await eventually(() => logLines.some((line) => line.includes('Redis answers again')), { everyMs: 100 }), 'back to shared counts')
  t.equal((await probe(someIp())).statusCode, 404)
})

t.test('a start waits for Redis\'s first answer or failure: a Redis that does not answer is warned of before the service is ready', async (t) => {
  const proxy = await startProxy(6379)
  t.teardown(() => proxy.close())
  // Connections are taken, and nothing passes: Redis's ready check goes unanswered (its 500 ms).
  proxy.pause()
  const logLines: string[] = []
  const app = await build(t, { logLines, env: { ...limits, REDIS_URL: `redis://127.0.0.1:${proxy.port}`, TRUST_PROXY: '127.0.0.1' } })
  const warnings = (): number => logLines.filter((line) => /Redis does not answer/.test(JSON.parse(line).msg)).length
  t.equal(warnings(), 1, 'warned during the start')
  t.equal((await app.inject({ url: '/nope', headers: { 'x-forwarded-for': someIp() } })).statusCode, 404, 'and requests are served, counted per replica')
  t.equal(warnings(), 1, 'with no second warning')
})

t.test('CORS: configured origins only, with credentials, never a wildcard', async (t) => {
  const origin = 'http://localhost:5173'
  const app = await build(t, { env: { CORS_ORIGINS: `${origin},https://app.example.com` } })
  const { access } = await login(app)

  const allowed = await app.inject({ url: '/api/detail', headers: { origin, authorization: `Bearer ${access}` } })
  t.equal(allowed.statusCode, 200)
  t.equal(allowed.headers['access-control-allow-origin'], origin)
  t.equal(allowed.headers['access-control-allow-credentials'], 'true')
  t.match(allowed.headers.vary, /Origin/)

  const preflight = await app.inject({
    method: 'OPTIONS',
    url: '/api/auth/login',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' }
  })
  t.equal(preflight.statusCode, 204)
  t.equal(preflight.headers['access-control-allow-origin'], origin)
  t.match(preflight.headers['access-control-allow-methods'], /POST/)
  t.match(preflight.headers['access-control-allow-headers'], /content-type/)

  const refused = await app.inject({ url: '/api/detail', headers: { origin: 'https://evil.example', authorization: `Bearer ${access}` } })
  t.notOk(refused.headers['access-control-allow-origin'], 'another origin gets no CORS header')
  const lookalike = await app.inject({ url: '/health/live', headers: { origin: 'http://localhost:51730' } })
  t.notOk(lookalike.headers['access-control-allow-origin'], 'exact match only')

  const error = await postJson(app, '/api/auth/login', { identifier: 'x', password: 'some password here' }, { origin })
  t.equal(error.statusCode, 401)
  t.equal(error.headers['access-control-allow-origin'], origin, 'errors are readable by the front end too')

  const none = await build(t)
  t.notOk((await none.inject({ url: '/health/live', headers: { origin } })).headers['access-control-allow-origin'], 'no CORS_ORIGINS: no CORS')
})

t.test('a sign-in by a passkey is limited per client IP, never per credential id: knowing one locks its owner out of nothing', async (t) => {
  const page = { origin: 'https://app.example.com', rpId: 'example.com' }
  const app = await build(t, { env: { ...limits, TRUST_PROXY: '127.0.0.1', RATE_LIMIT_CREDENTIALS_MAX: '3', RATE_LIMIT_IDENTIFIER_MAX: '2', WEBAUTHN_RP_ID: page.rpId, WEBAUTHN_ORIGINS: page.origin } })
  const { access } = await login(app)
  const owner = { authorization: `Bearer ${access}` }
  const made = (await postJson(app, '/api/auth/passkeys/registration/options', {}, owner)).json()
  const passkey = createPasskey(made.options, page)
  t.equal((await postJson(app, '/api/auth/passkeys/registration/verify', { challenge_id: made.challenge_id, credential: passkey.response }, owner)).statusCode, 201)
  const signIn = async (ip: string, settings: { userVerified?: boolean } = {}): Promise<LightMyRequestResponse> => {
    const { challenge_id: challengeId, options } = (await postJson(app, '/api/auth/passkeys/authentication/options', {}, { 'x-forwarded-for': ip })).json()
    return await postJson(app, '/api/auth/passkeys/authentication/verify', { challenge_id: challengeId, credential: assertPasskey(passkey.credential, options, { ...page, ...settings }) }, { 'x-forwarded-for': ip })
  }
  // Someone holding the credential id (it is no secret) sends refused answers naming it from many addresses.
  for (let i = 0; i < 4; i++) t.equal((await signIn(someIp(), { userVerified: false })).statusCode, 401)
  t.equal((await signIn(someIp())).statusCode, 200, 'the owner still signs in')
  // One address is counted on each route.
  const one = someIp()
  for (let i = 0; i < 3; i++) t.equal((await signIn(one, { userVerified: false })).statusCode, 401)
  assertLimited(t, await postJson(app, '/api/auth/passkeys/authentication/options', {}, { 'x-forwarded-for': one }))
})
