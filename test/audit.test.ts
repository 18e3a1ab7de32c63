import t from 'tap'
import { build, login, postJson, register, TestClock, uniqueUser } from './helper.ts'

const agent = { 'user-agent': 'audit-test/1.0' }

t.test('every security event of a flow is in the audit trail: who, session, ip, user agent, time, outcome', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock, env: { AUTH_REUSE_GRACE_S: '0' } })
  const user = uniqueUser()
  const registered = await postJson(app, '/api/auth/register', user, agent)
  const userId = registered.json().user.id as number

  const loginAs = (password: string) => postJson(app, '/api/auth/login', { identifier: user.username, password }, agent)
  t.equal((await loginAs('a wrong password, this')).statusCode, 401)
  t.equal((await postJson(app, '/api/auth/login', { identifier: 'nobody-at-all', password: 'whatever it is' }, agent)).statusCode, 401)
  const first = (await loginAs(user.password)).json()
  const second = (await loginAs(user.password)).json()
  const refreshed = await postJson(app, '/api/token/refresh', { refresh: first.refresh }, agent)
  t.equal(refreshed.statusCode, 200)
  // The used token again, past the grace: reuse, and its session ends.
  t.equal((await postJson(app, '/api/token/refresh', { refresh: first.refresh }, agent)).statusCode, 401)

  const third = (await loginAs(user.password)).json()
  const bearer = { ...agent, authorization: `Bearer ${third.access}` }
  t.equal((await postJson(app, '/api/auth/password', { current_password: user.password, new_password: 'a brand new passphrase' }, bearer)).statusCode, 204)
  const fourth = (await postJson(app, '/api/auth/login', { identifier: user.username, password: 'a brand new passphrase' }, agent)).json()
  const sid = (token: string): string => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).sid
  t.equal((await app.inject({ method: 'DELETE', url: `/api/auth/sessions/${sid(fourth.access)}`, headers: bearer })).statusCode, 204)
  t.equal((await postJson(app, '/api/auth/logout', {}, bearer)).statusCode, 204)
  t.equal(second.refresh === undefined, false)

  await app.audit.flush()
  const rows = await app.db.selectFrom('audit_events').selectAll().orderBy('id').execute()
  t.same(rows.map((r) => [r.event, r.outcome]), [
    ['register', 'success'],
    ['login', 'failure'],
    ['login', 'failure'],
    ['login', 'success'],
    ['login', 'success'],
    ['refresh', 'success'],
    ['reuse_detected', 'failure'],
    ['login', 'success'],
    ['password_changed', 'success'],
    ['login', 'success'],
    ['session_revoked', 'success'],
    ['logout', 'success']
  ])
  for (const row of rows) {
    t.equal(row.ip, '127.0.0.1')
    t.equal(row.user_agent, 'audit-test/1.0')
    t.ok(Math.abs(new Date(row.at).getTime() - clock.now().getTime()) < 60_000, 'the time it happened')
  }
  const [registerRow, wrongPassword, unknownUser] = rows
  t.equal(registerRow!.user_id, userId)
  t.equal(wrongPassword!.identifier, user.username, 'a failed login names what was tried')
  t.equal(unknownUser!.identifier, 'nobody-at-all')
  t.equal(unknownUser!.user_id, null)
  const reuse = rows.find((r) => r.event === 'reuse_detected')!
  t.equal(reuse.session_id, sid(first.access))
  t.equal(reuse.user_id, userId)
  t.equal(rows.find((r) => r.event === 'session_revoked')!.session_id, sid(fourth.access))
  t.equal(rows.find((r) => r.event === 'logout')!.session_id, sid(third.access))
  t.notOk(JSON.stringify(rows).includes(user.password), 'no password in the trail')
})

t.test('blacklist is a logout in the trail; an expired token\'s refresh is a failure', async (t) => {
  const app = await build(t)
  const { refresh, user } = await login(app)
  t.equal((await postJson(app, '/api/token/blacklist', { refresh })).statusCode, 200)
  t.equal((await postJson(app, '/api/token/refresh', { refresh })).statusCode, 401)
  await app.audit.flush()
  const rows = await app.db.selectFrom('audit_events').select(['event', 'outcome', 'user_id']).orderBy('id').execute()
  t.same(rows.slice(-2), [
    { event: 'logout', outcome: 'success', user_id: user.id },
    { event: 'refresh', outcome: 'failure', user_id: user.id }
  ])
})

t.test('control characters a client typed reach the trail written out, never raw', async (t) => {
  const app = await build(t)
  const identifier = 'mallory\u001b[2J\u001b]0;owned\u0007\r\nroot'
  t.equal((await postJson(app, '/api/auth/login', { identifier, password: 'not a password' }, { 'user-agent': 'agent\u0008\u0008\u007f' })).statusCode, 401)
  await app.audit.flush()
  const row = await app.db.selectFrom('audit_events').select(['identifier', 'user_agent']).where('event', '=', 'login').executeTakeFirstOrThrow()
  t.equal(row.identifier, 'mallory\\u001b[2J\\u001b]0;owned\\u0007\\u000d\\u000aroot')
  t.equal(row.user_agent, 'agent\\u0008\\u0008\\u007f')
  t.notOk(/\p{Cc}/u.test(`${row.identifier}${row.user_agent}`), 'no control character left')
})

t.test('events older than AUDIT_RETENTION are pruned; newer ones stay', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock, env: { AUDIT_RETENTION: '30d' } })
  await register(app)
  clock.advance(31 * 86400)
  await register(app)
  await app.audit.flush()
  t.equal(await app.audit.prune(app.config.auditRetentionS), 1)
  t.same((await app.db.selectFrom('audit_events').select('event').execute()).length, 1)
})

t.test('a database that cannot take the events never fails a request, and says how many were lost', async (t) => {
  const logLines: string[] = []
  const app = await build(t, { logLines })
  await app.db.schema.dropTable('audit_events').execute()
  const res = await postJson(app, '/api/auth/register', uniqueUser())
  t.equal(res.statusCode, 201)
  await app.audit.flush()
  const warning = logLines.map((line) => JSON.parse(line)).find((e) => e.msg === 'audit events could not be written')
  t.equal(warning?.count, 1)
})

t.test('an event the table refuses is lost alone, not with the others of its batch', async (t) => {
  const logLines: string[] = []
  const app = await build(t, { logLines })
  const before = Number((await app.db.selectFrom('audit_events').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow()).n)
  app.audit.record({ event: 'key_rotated', userId: 1 })
  app.audit.record({ event: 'key_rotated', userId: 2 ** 33 })
  app.audit.record({ event: 'key_rotated', userId: 3 })
  await app.audit.flush()
  const rows = await app.db.selectFrom('audit_events').select('user_id').where('event', '=', 'key_rotated').orderBy('id').execute()
  t.same(rows, [{ user_id: 1 }, { user_id: 3 }])
  t.equal(Number((await app.db.selectFrom('audit_events').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow()).n), before + 2)
  const warning = logLines.map((line) => JSON.parse(line)).find((e) => e.msg === 'audit events could not be written')
  t.equal(warning?.count, 1)
})
