import t from 'tap'
import { build, postJson, uniqueUser } from './helper.ts'

t.test('logs are JSON lines with request ids, and never hold a password, token or cookie', async (t) => {
  const logLines: string[] = []
  const app = await build(t, { logLines })
  const user = uniqueUser()
  await postJson(app, '/api/auth/register', user)
  const login = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password }, { 'x-request-id': 'gateway-request-1' })
  const { access, refresh } = login.json()
  const cookie = (login.headers['set-cookie'] as string[]).map((c) => c.split(';')[0]).join('; ')
  await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}`, cookie } })
  await postJson(app, '/api/token/refresh', { refresh }, { cookie })
  await postJson(app, '/api/auth/login', { identifier: user.username, password: 'a wrong password here' })
  await postJson(app, '/api/auth/login', '{"identifier": "x", "password": "broken json', {})

  const entries = logLines.map((line) => JSON.parse(line))
  t.ok(entries.some((e) => e.msg === 'login' && e.userId !== undefined), 'security events are logged')
  t.ok(entries.some((e) => e.reqId === 'gateway-request-1'), "the gateway's request id is kept")
  // Request logs hold no headers or bodies; should a body ever be logged, the redaction holds.
  app.log.info({ body: { password: user.password, refresh, access, token: access } }, 'a body')
  t.same(JSON.parse(logLines.at(-1)!).body, { password: '[redacted]', refresh: '[redacted]', access: '[redacted]', token: '[redacted]' })
  const all = logLines.join('\n')
  for (const secret of [user.password, access, refresh, access.split('.')[2]!, 'broken json']) {
    t.notOk(all.includes(secret), `not logged: ${secret.slice(0, 12)}…`)
  }
})
