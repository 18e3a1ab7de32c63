import t from 'tap'
import { build, postJson, uniqueUser } from './helper.ts'

t.test('the log of a register, login, refresh, failed login and logout flow holds no password, token or cookie value', async (t) => {
  const logLines: string[] = []
  // Request ids are taken from a trusted proxy only: inject's peer is 127.0.0.1.
  const app = await build(t, { logLines, env: { TRUST_PROXY: '127.0.0.1' } })
  const user = uniqueUser()
  await postJson(app, '/api/auth/register', user)
  const login = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password }, { 'x-request-id': 'gateway-request-1' })
  const { access, refresh } = login.json()
  const cookie = (login.headers['set-cookie'] as string[]).map((c) => c.split(';')[0]).join('; ')
  await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}`, cookie } })
  const rotated = await postJson(app, '/api/token/refresh', {}, { cookie })
  const rotatedCookie = (rotated.headers['set-cookie'] as string[]).map((c) => c.split(';')[0]).join('; ')
  await postJson(app, '/api/auth/login', { identifier: user.username, password: 'a wrong password here' })
  await postJson(app, '/api/auth/login', '{"identifier": "x", "password": "broken json', {})
  await postJson(app, '/api/auth/password', { current_password: 'not the password', new_password: 'another fine password' }, { authorization: `Bearer ${access}` })
  await postJson(app, '/api/auth/logout', {}, { cookie: rotatedCookie })

  const entries = logLines.map((line) => JSON.parse(line))
  t.ok(entries.some((e) => e.msg === 'login' && e.userId !== undefined), 'security events are logged')
  t.ok(entries.some((e) => e.reqId === 'gateway-request-1'), "the gateway's request id is kept")
  // Request logs hold no headers or bodies; should a body ever be logged, the redaction holds.
  app.log.info({ body: { password: user.password, refresh, access, token: access } }, 'a body')
  t.same(JSON.parse(logLines.at(-1)!).body, { password: '[redacted]', refresh: '[redacted]', access: '[redacted]', token: '[redacted]' })
  const all = logLines.join('\n')
  t.same(entries.filter((e) => e.event !== undefined).map((e) => [e.event, e.outcome]), [
    ['register', 'success'], ['login', 'success'], ['refresh', 'success'], ['login', 'failure'], ['password_changed', 'failure'], ['logout', 'success']
  ], 'the whole flow is in the log')
  const values = [rotated.json().access, rotated.json().refresh, ...[cookie, rotatedCookie].flatMap((c) => c.split('; ').map((pair) => pair.split('=')[1]!))]
  for (const secret of [user.password, access, refresh, access.split('.')[2]!, 'broken json', 'not the password', ...values]) {
    t.notOk(all.includes(secret), `not logged: ${secret.slice(0, 12)}…`)
  }
})

t.test('an incoming request id is taken from a trusted proxy only, and only when short and plain', async (t) => {
  const logLines: string[] = []
  const untrusted = await build(t, { logLines })
  await untrusted.inject({ url: '/api/nope', headers: { 'x-request-id': 'forged-by-a-client' } })
  const trusted = await build(t, { logLines, env: { TRUST_PROXY: '127.0.0.1' } })
  await trusted.inject({ url: '/api/nope', headers: { 'x-request-id': 'x'.repeat(129) } })
  await trusted.inject({ url: '/api/nope', headers: { 'x-request-id': 'bad id\u0007with"quotes' } })
  const ids = logLines.map((line) => JSON.parse(line).reqId).filter(Boolean)
  t.ok(ids.length >= 3)
  t.ok(ids.every((id: string) => /^[0-9a-f-]{36}$/.test(id)), 'each replaced by a fresh UUID')
})
