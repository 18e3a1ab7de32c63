import t from 'tap'
import { build, claimsOf, eventually, freshDatabase, lockSession, lockWaiters, login, postJson, TestClock } from './helper.ts'

// Concurrent refreshes share one statement and one commit (src/services/sessions/sessions.ts,
// migrations/0018-refresh-batch.ts). Whatever groups they fall into, each gets what it would
// alone: a rotation, the same pair again for a retry within the grace, a revoked session for a
// token used after it. Two groups run at a time, so the others wait and go together.

t.test('refreshes sent at once: each rotated, a retry answered with the same pair, a reuse revoking only its session', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const signedIn = await Promise.all(Array.from({ length: 24 }, () => login(app)))
  // A token used once, then presented again after the grace: a reuse.
  const stolen = signedIn[0]!.refresh
  t.equal((await postJson(app, '/api/token/refresh', { refresh: stolen })).statusCode, 200)
  clock.advance(app.config.AUTH_REUSE_GRACE_S + 1)

  const before = app.sessions.rotations()
  const twice = signedIn[1]!.refresh
  const tokens = [stolen, twice, ...signedIn.slice(1).map((s) => s.refresh)]
  const answers = await Promise.all(tokens.map((refresh) => postJson(app, '/api/token/refresh', { refresh })))
  const after = app.sessions.rotations()
  const groups = after.groups - before.groups
  t.equal(after.calls - before.calls, tokens.length, 'a rotation each')
  // PGlite runs each statement in this thread as it is given: none is in flight when the next
  // refresh comes, so each goes alone. PostgreSQL answers over a socket meanwhile.
  if (process.env.DB_ENGINE === 'postgres') t.ok(groups < tokens.length / 2, `the refreshes that came while one group ran went together: ${tokens.length} in ${groups} groups`)

  t.equal(answers[0]!.statusCode, 401, 'the reused token is refused')
  t.same(answers.slice(1).map((res) => res.statusCode), tokens.slice(1).map(() => 200), 'every other refresh answered')
  t.same(answers[1]!.json(), answers[2]!.json(), 'the same token twice: one rotation, the retry gets its pair')
  const pairs = answers.slice(2).map((res) => res.json() as { access: string, refresh: string })
  t.equal(new Set(pairs.map((p) => claimsOf(p.refresh).jti)).size, pairs.length, 'a new refresh token for each session')
  t.same(pairs.map((p) => claimsOf(p.refresh).sid), signedIn.slice(1).map((s) => claimsOf(s.refresh).sid), 'each in its own session')
  t.match(app.sessions.rotations(), { waiting: 0, running: 0 })

  // Committed, each: the new tokens work, the old are spent, the reused session is over.
  const next = await Promise.all(pairs.map((p) => postJson(app, '/api/token/refresh', { refresh: p.refresh })))
  t.same(next.map((res) => res.statusCode), pairs.map(() => 200), 'each new refresh token refreshes again')
  clock.advance(app.config.AUTH_REUSE_GRACE_S + 1)
  t.equal((await postJson(app, '/api/token/refresh', { refresh: signedIn[5]!.refresh })).statusCode, 401, 'a rotated token is spent')
  t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${signedIn[0]!.access}` } })).statusCode, 401, 'the reused session is revoked')
  t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${pairs[3]!.access}` } })).statusCode, 200, 'the others are not')
})

// A group deadlocked with another transaction (another replica's group, taking the same rows in
// the other order): PostgreSQL ends the group, and its rotations run again, one by one. Here the
// other transaction holds the session, then asks for the token the group holds; its own
// deadlock_timeout is longer than the server's, so the group is the one PostgreSQL ends.
t.test('a group ended by a deadlock runs again: the refresh is answered', { skip: process.env.DB_ENGINE !== 'postgres' && 'a deadlock takes two connections: PostgreSQL' }, async (t) => {
  const database = await freshDatabase(t)
  const app = await build(t, { database })
  const { refresh } = await login(app)
  const { sid, jti } = claimsOf(refresh) as { sid: string, jti: string }
  const other = await lockSession(t, database.DATABASE_URL!, sid)
  await other.query("set deadlock_timeout = '30s'")
  const answer = postJson(app, '/api/token/refresh', { refresh })
  const waiters = await lockWaiters(t, database.DATABASE_URL!)
  t.ok(await eventually(async () => (await waiters()).length > 0), 'the group holds the token and waits for the session')
  // The server's deadlock_timeout (1 s) passes first: the group's check finds the cycle.
  await other.query('select jti from refresh_tokens where jti = $1 for update', [jti])
  await other.query('rollback')
  const res = await answer
  t.equal(res.statusCode, 200, 'rotated on the second try')
  const next = await postJson(app, '/api/token/refresh', { refresh: res.json().refresh })
  t.equal(next.statusCode, 200, 'its new refresh token is the live one')
})
