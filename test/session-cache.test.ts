import pg from 'pg'
import t from 'tap'
import { SessionCache } from '../src/services/sessions/cache.ts'
import { sql } from 'kysely'
import { SESSION_USER_COLUMNS } from '../src/services/accounts/users.ts'
import { createSessions } from '../src/services/sessions/sessions.ts'
import { parseClaims } from '../src/services/auth/claims.ts'
import { build, claimsOf, eventually, freshDatabase, login, postJson, unheard } from './helper.ts'

const onPostgres = process.env.DB_ENGINE === 'postgres'
const skip = !onPostgres && 'the session cache runs on PostgreSQL only (PGlite answers in the process)'

t.test('the cache is used only while its notification channel beats', async (t) => {
  let now = 0
  const cache = new SessionCache({ now: () => now, ttlMs: 60_000, heartbeatTimeoutMs: 1000 })
  const user = { id: 1, username: 'a', email: 'a@example.com', sessionId: 's1', roles: [], email_verified_at: null }
  cache.keep(user, cache.generation)
  t.equal(cache.of('s1', 1), undefined, 'nothing is kept before the first heartbeat')
  cache.heartbeat()
  cache.keep(user, cache.generation)
  t.same(cache.of('s1', 1), user)
  t.equal(cache.of('s1', 2), undefined, 'another user id for the session: a miss')
  now += 999
  t.same(cache.of('s1', 1), user)
  now += 2
  t.equal(cache.of('s1', 1), undefined, 'no heartbeat for a second: not used')
  cache.heartbeat()
  t.same(cache.of('s1', 1), user)
  now += 60_001
  cache.heartbeat()
  t.equal(cache.of('s1', 1), undefined, 'past its TTL')
})

t.test('a read that raced an invalidation is not kept; notifications forget sessions and users', async (t) => {
  const cache = new SessionCache()
  cache.heartbeat()
  const generation = cache.generation
  cache.forget('s1')
  cache.keep({ id: 1, username: 'a', email: 'a@example.com', sessionId: 's1', roles: [], email_verified_at: null }, generation)
  t.equal(cache.of('s1', 1), undefined, 'read before the revocation, stored after it: dropped')
  for (const sid of ['s1', 's2']) cache.keep({ id: 1, username: 'a', email: 'a@example.com', sessionId: sid, roles: [], email_verified_at: null }, cache.generation)
  cache.keep({ id: 2, username: 'b', email: 'b@example.com', sessionId: 's3', roles: [], email_verified_at: null }, cache.generation)
  cache.notified('s:s1')
  t.equal(cache.of('s1', 1), undefined)
  t.ok(cache.of('s2', 1))
  cache.notified('u:1')
  t.equal(cache.of('s2', 1), undefined)
  t.ok(cache.of('s3', 2), 'another user stays')
  cache.clear()
  t.equal(cache.size, 0)
  t.notOk(cache.live, 'cleared: unused until the next heartbeat')
})

t.test('cached reads spare the database; revocations through the service are forgotten at once', async (t) => {
  const app = await build(t)
  const { access } = await login(app)
  const claims = parseClaims(claimsOf(access), 'access', app.clock.now())
  let reads = 0
  // The sessions service on a database that counts the selects it is asked for.
  const db = app.db.withPlugin({
    transformQuery: ({ node }) => { if (node.kind === 'SelectQueryNode') reads++; return node },
    transformResult: async ({ result }) => result
  })
  const cache = new SessionCache()
  cache.heartbeat()
  const sessions = createSessions({ db, keyring: app.keyring, clock: app.clock, config: app.config, audit: app.audit, cache })
  for (let i = 0; i < 5; i++) t.equal((await sessions.userOf(claims))?.sessionId, claims.sid)
  t.equal(reads, 1, 'one database read for five checks')
  t.ok(await sessions.liveUser(claims))
  t.equal(reads, 1, 'liveUser of an access token reads the cache too')
  await sessions.revoke(claims.user_id, claims.sid, 'current')
  t.equal(await sessions.userOf(claims), undefined, 'refused at once after its own revocation')
})

t.test('two replicas: a revocation anywhere is honoured everywhere by its notification, and never served after a lost channel; a revocation no trigger sees, at the TTL', { skip }, async (t) => {
  const database = await freshDatabase(t)
  // B's cache on a clock the test holds, its heartbeats good for an hour: no entry ages out and
  // no lapse of the channel turns the cache off by itself, so a refusal on B has no explanation
  // but what the database told B. (docs/operations.md: within a second; how soon is the machine's.)
  let cacheNow = 0
  const cache = new SessionCache({ now: () => cacheNow, heartbeatTimeoutMs: 3_600_000 })
  const a = await build(t, { database })
  const b = await build(t, { database, overrides: { sessionCache: cache } })
  const admin = new pg.Client({ connectionString: database.DATABASE_URL })
  await admin.connect()
  t.teardown(() => admin.end())
  t.ok(await eventually(() => cache.live), 'B\'s listener beats: its cache is in use')

  const detailOn = async (app: typeof a, access: string) => (await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode
  const sidOf = (access: string) => claimsOf(access).sid as string
  /**
   * Signs in on A; B reads the session, and keeps it. A read that a notification overtook (one
   * of an earlier logout, still on its way) is rightly not kept: the next read is.
   */
  async function cachedOnB (): Promise<Awaited<ReturnType<typeof login>>> {
    const signedIn = await login(a)
    t.ok(await eventually(async () => await detailOn(b, signedIn.access) === 200 && cache.of(sidOf(signedIn.access), signedIn.user.id) !== undefined), 'read, and kept in B\'s cache')
    return signedIn
  }
  /** Whether B comes to refuse `access`: only what it is told can make it. */
  const refusedOnB = (access: string) => eventually(async () => await detailOn(b, access) === 401)

  const first = await cachedOnB()
  t.equal((await postJson(a, '/api/auth/logout', {}, { authorization: `Bearer ${first.access}` })).statusCode, 204)
  t.ok(await refusedOnB(first.access), 'a logout on A: refused on B')

  const second = await login(b)
  t.equal(await detailOn(b, second.access), 200)
  t.equal((await postJson(b, '/api/auth/logout', {}, { authorization: `Bearer ${second.access}` })).statusCode, 204)
  t.equal(await detailOn(b, second.access), 401, 'its own logout: refused on B at once')

  const third = await cachedOnB()
  await admin.query('update sessions set revoked_at = now() where id = $1', [sidOf(third.access)])
  t.ok(await refusedOnB(third.access), 'an operator\'s SQL: refused on B')

  const fourth = await cachedOnB()
  await admin.query('update users set is_active = false where id = $1', [fourth.user.id])
  t.ok(await refusedOnB(fourth.access), 'a deactivated user: refused on B')

  // The channel is cut, and a change is made that nothing will ever tell of: what the channel
  // might have said is unknown, so the cache is dropped, not trusted.
  const fifth = await cachedOnB()
  await admin.query("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'authgate-listener' and datname = current_database()")
  await unheard(database.DATABASE_URL!, 'sessions', 'update sessions set revoked_at = now() where id = $1', [sidOf(fifth.access)])
  t.ok(await refusedOnB(fifth.access), 'with the channel cut: refused on B')

  // It comes back: cached again, and notified again.
  t.ok(await eventually(() => cache.live), 'B\'s listener beats again')
  const sixth = await cachedOnB()
  await postJson(a, '/api/auth/logout', {}, { authorization: `Bearer ${sixth.access}` })
  t.ok(await refusedOnB(sixth.access), 'notified again after the reconnection')

  // Changes no row trigger sees: a replication role (logical replication, some restores) fires
  // the triggers all the same (ENABLE ALWAYS); TRUNCATE fires a statement trigger.
  const seventh = await cachedOnB()
  await admin.query('begin')
  await admin.query('set local session_replication_role = replica')
  await admin.query('update sessions set revoked_at = now() where id = $1', [sidOf(seventh.access)])
  await admin.query('commit')
  t.ok(await refusedOnB(seventh.access), 'revoked under session_replication_role = replica: refused on B')

  const eighth = await cachedOnB()
  await admin.query('truncate sessions cascade')
  t.ok(await refusedOnB(eighth.access), 'TRUNCATE: refused on B')

  // A trigger an operator disabled by hand: nothing is notified, and the entry's TTL bounds it.
  // The composition root builds its cache with SessionCache's defaults, as this one is: 5 s.
  const ninth = await cachedOnB()
  await unheard(database.DATABASE_URL!, 'sessions', 'update sessions set revoked_at = now() where id = $1', [sidOf(ninth.access)])
  t.equal(await detailOn(b, ninth.access), 200, 'revoked unheard of: still served from B\'s cache')
  cacheNow += 5000
  t.equal(await detailOn(b, ninth.access), 200, 'kept for the TTL (5 s)')
  cacheNow += 1
  t.equal(await detailOn(b, ninth.access), 401, 'refused on B once older than the TTL (the 60 s of before would fail here)')
})

t.test('the trigger that tells every replica of a user\'s change fires on exactly the columns a cached session user holds', async (t) => {
  const app = await build(t)
  const { rows } = await sql<{ column: string }>`
    select a.attname as column from pg_catalog.pg_trigger t
    join pg_catalog.pg_attribute a on a.attrelid = t.tgrelid and a.attnum = any (t.tgattr)
    where t.tgname = 'users_notify'`.execute(app.db)
  // The id never changes (an identity column); whether the user is active decides every session.
  const expected = [...SESSION_USER_COLUMNS.filter((column) => column !== 'id'), 'is_active']
  t.same(rows.map((row) => row.column).sort(), expected.sort(), 'a column added to the session user needs the trigger to watch it (a new migration)')
})
