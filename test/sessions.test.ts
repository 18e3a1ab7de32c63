import t from 'tap'
import { randomUUID } from 'node:crypto'
import { runCli } from '../src/cli.ts'
import { TokenNotValidError } from '../src/errors.ts'
import { silentLogger } from '../src/lib/logger.ts'
import { createCleanup } from '../src/services/cleanup.ts'
import type { TokenClaims } from '../src/services/auth/claims.ts'
import { bearer, build, claimsOf, eventually, freshDatabase, login, postJson, refreshCookie, register, SECRET_KEY, TestClock } from './helper.ts'

const cleared = (setCookie: string | string[] | undefined): string[] =>
  ([setCookie ?? []].flat()).filter((c) => /Expires=Thu, 01 Jan 1970/.test(c)).map((c) => c.split('=')[0]!).sort()

t.test('ending sessions and managing them', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  /** Another sign-in of the same user: a second device. */
  const again = async (user: { username: string, password: string }): Promise<{ access: string, refresh: string }> =>
    (await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password }, { 'user-agent': 'second device' })).json()
  const detail = async (access: string): Promise<number> => (await app.inject({ url: '/api/detail', headers: bearer(access) })).statusCode
  const refreshes = async (refresh: string): Promise<number> => (await postJson(app, '/api/token/refresh', { refresh })).statusCode

  t.test('logout ends this session at once, clears both cookies as they were set, and leaves the other sessions', async (t) => {
    const first = await login(app)
    const second = await again(first.user)
    const res = await postJson(app, '/api/auth/logout', {}, bearer(first.access))
    t.equal(res.statusCode, 204)
    t.equal(res.body, '')
    t.same(cleared(res.headers['set-cookie']), ['__Host-access_token', '__Host-refresh_binding', '__Secure-refresh_token'])
    t.match([res.headers['set-cookie']].flat().join('\n'), /__Secure-refresh_token=; Max-Age=0; Path=\/api\/token;.*HttpOnly; Secure; SameSite=Lax/)
    t.equal(await detail(first.access), 401, 'its access token stops at detail')
    t.equal((await postJson(app, '/api/token/verify', { token: first.access })).statusCode, 401, 'and at verify')
    t.equal(await refreshes(first.refresh), 401, 'its refresh token stops')
    t.equal(await detail(second.access), 200, 'the other session keeps working')
    t.equal(await refreshes(second.refresh), 200)
  })

  t.test('logout with a Bearer token and no body at all, as clients send it', async (t) => {
    const { access } = await login(app)
    const res = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(access) })
    t.equal(res.statusCode, 204)
    t.equal(await detail(access), 401)
    // With the cookie only, a bodiless POST could come from a cross-site form: refused.
    const browser = await login(app)
    const cookieOnly = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: { cookie: `__Host-access_token=${browser.access}` } })
    t.equal(cookieOnly.statusCode, 415)
    t.equal(await detail(browser.access), 200, 'and it changed nothing')
    const withBody = await app.inject({ method: 'POST', url: '/api/auth/logout', payload: 'x', headers: bearer(browser.access) })
    t.equal(withBody.statusCode, 415, 'a body that is not JSON is refused, Bearer or not')
  })

  t.test('logout with the access cookie', async (t) => {
    const { access } = await login(app)
    const res = await postJson(app, '/api/auth/logout/', {}, { cookie: `__Host-access_token=${access}` })
    t.equal(res.statusCode, 204)
    t.equal(await detail(access), 401)
  })

  t.test('signing out always works for the browser', async (t) => {
    t.test('an expired access token still ends its own session', async (t) => {
      const { access, refresh } = await login(app)
      clock.advance(301)
      const res = await postJson(app, '/api/auth/logout', {}, bearer(access))
      t.equal(res.statusCode, 204)
      t.equal(await refreshes(refresh), 401, 'the session is over')
    })
    t.test('a token of a session already ended signs out again', async (t) => {
      const { access } = await login(app)
      t.equal((await postJson(app, '/api/auth/logout', {}, bearer(access))).statusCode, 204)
      const res = await postJson(app, '/api/auth/logout', {}, bearer(access))
      t.equal(res.statusCode, 204)
      t.same(cleared(res.headers['set-cookie']), ['__Host-access_token', '__Host-refresh_binding', '__Secure-refresh_token'])
    })
    t.test('no token, or one that is not valid: 401, and the cookies are cleared all the same', async (t) => {
      for (const headers of [{}, bearer('not-a-token'), { cookie: '__Host-access_token=garbage' }] as Array<Record<string, string>>) {
        const res = await postJson(app, '/api/auth/logout', {}, headers)
        t.equal(res.statusCode, 401, JSON.stringify(headers))
        t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
        t.same(cleared(res.headers['set-cookie']), ['__Host-access_token', '__Host-refresh_binding', '__Secure-refresh_token'])
      }
    })
    t.test('a refresh token is not an access token', async (t) => {
      const { refresh, access } = await login(app)
      t.equal((await postJson(app, '/api/auth/logout', {}, bearer(refresh))).statusCode, 401)
      t.equal(await detail(access), 200, 'nothing ended')
    })
  })

  t.test('logout ?scope=others ends the other sessions and keeps this one and its cookies', async (t) => {
    const first = await login(app)
    const second = await again(first.user)
    const third = await again(first.user)
    const res = await postJson(app, '/api/auth/logout?scope=others', {}, bearer(first.access))
    t.equal(res.statusCode, 204)
    t.same(cleared(res.headers['set-cookie']), [])
    t.equal(await detail(first.access), 200)
    t.equal(await detail(second.access), 401)
    t.equal(await refreshes(third.refresh), 401)
  })

  t.test('logout ?scope=global ends every session of the user, and only theirs', async (t) => {
    const first = await login(app)
    const second = await again(first.user)
    const stranger = await login(app)
    t.equal((await postJson(app, '/api/auth/logout?scope=global', {}, bearer(second.access))).statusCode, 204)
    t.equal(await detail(first.access), 401)
    t.equal(await detail(second.access), 401)
    t.equal(await detail(stranger.access), 200)
  })

  t.test('ending other sessions takes a live token of an active session; an unknown scope is 400', async (t) => {
    const { access, user } = await login(app)
    const other = await again(user)
    clock.advance(301)
    t.equal((await postJson(app, '/api/auth/logout?scope=global', {}, bearer(access))).statusCode, 401, 'expired')
    clock.advance(-301)
    const res = await postJson(app, '/api/auth/logout?scope=everything', {}, bearer(other.access))
    t.equal(res.statusCode, 400)
    t.equal(res.json().code, 'validation_failed')
    t.equal(await detail(other.access), 200)
  })

  t.test('blacklist (simplejwt) ends the session of a refresh token in the body', async (t) => {
    const first = await login(app)
    const second = await again(first.user)
    const res = await postJson(app, '/api/token/blacklist/', { refresh: first.refresh })
    t.equal(res.statusCode, 200)
    t.same(res.json(), {})
    t.equal(res.headers['set-cookie'], undefined, 'no cookies were used, none cleared')
    t.equal(await detail(first.access), 401)
    t.equal(await refreshes(first.refresh), 401)
    t.equal(await detail(second.access), 200, 'the other session keeps working')
    const twice = await postJson(app, '/api/token/blacklist', { refresh: first.refresh })
    t.equal(twice.statusCode, 401, 'a blacklisted token is refused the second time')
    t.equal(twice.json().code, 'token_not_valid')
  })

  t.test('blacklist with the refresh cookie clears the cookies', async (t) => {
    const { refresh, access } = await login(app)
    const res = await postJson(app, '/api/token/blacklist', {}, { cookie: refreshCookie(refresh) })
    t.equal(res.statusCode, 200)
    t.same(cleared(res.headers['set-cookie']), ['__Host-access_token', '__Host-refresh_binding', '__Secure-refresh_token'])
    t.equal(await detail(access), 401)
  })

  t.test('blacklist refuses an access token and missing tokens', async (t) => {
    const { access } = await login(app)
    const res = await postJson(app, '/api/token/blacklist', { refresh: access })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_not_valid')
    t.equal(await detail(access), 200)
    t.equal((await postJson(app, '/api/token/blacklist', {})).json().code, 'not_authenticated')
  })

  t.test('the session list: the caller\'s active sessions, newest first, the current one marked', async (t) => {
    const first = await login(app)
    clock.advance(1)
    const second = await again(first.user)
    const ended = await again(first.user)
    await postJson(app, '/api/auth/logout', {}, bearer(ended.access))
    await login(app)
    const res = await app.inject({ url: '/api/auth/sessions', headers: { ...bearer(second.access), 'user-agent': 'ignored here' } })
    t.equal(res.statusCode, 200)
    const { sessions } = res.json()
    t.same(sessions.map((s: { id: string }) => s.id), [claimsOf(second.access).sid, claimsOf(first.access).sid], 'newest first; ended and other users\' sessions left out')
    t.match(sessions[0], { current: true, user_agent: 'second device', ip: '127.0.0.1', created_at: String, last_seen_at: String })
    t.match(sessions[1], { current: false })
    t.same(Object.keys(sessions[0]).sort(), ['created_at', 'current', 'id', 'ip', 'last_seen_at', 'user_agent'])
    t.equal((await app.inject({ url: '/api/auth/sessions' })).statusCode, 401)
  })

  t.test('DELETE a session of one\'s own ends it; another user\'s or an unknown one is 404; a malformed id 400', async (t) => {
    const first = await login(app)
    const second = await again(first.user)
    const stranger = await login(app)
    const remove = (id: string, token = first.access) => app.inject({ method: 'DELETE', url: `/api/auth/sessions/${id}`, headers: bearer(token) })
    const own = await remove(claimsOf(second.access).sid as string)
    t.equal(own.statusCode, 204)
    t.equal(await detail(second.access), 401)
    t.equal(await detail(first.access), 200)
    const cases: Array<[string, string]> = [
      ['ended already', claimsOf(second.access).sid as string],
      ['another user\'s', claimsOf(stranger.access).sid as string],
      ['unknown', '00000000-0000-4000-8000-000000000000']
    ]
    for (const [why, id] of cases) {
      const res = await remove(id)
      t.equal(res.statusCode, 404, why)
      t.equal(res.json().code, 'not_found')
    }
    t.equal(await detail(stranger.access), 200, 'the stranger\'s session lives')
    for (const id of ['not-a-uuid', `urn:uuid:${claimsOf(first.access).sid as string}`, `{${claimsOf(first.access).sid as string}}`, (claimsOf(first.access).sid as string).replaceAll('-', '')]) {
      const bad = await remove(id)
      t.equal(bad.statusCode, 400, id)
      t.equal(bad.json().code, 'validation_failed')
    }
    t.equal(await detail(first.access), 200, 'no form of its id ended this session')
  })

  t.test('password change', async (t) => {
    t.test('a wrong current password is 401 invalid_credentials and changes nothing', async (t) => {
      const { access, user } = await login(app)
      const res = await postJson(app, '/api/auth/password', { current_password: 'not the password', new_password: 'a brand new passphrase' }, bearer(access))
      t.equal(res.statusCode, 401)
      t.equal(res.json().code, 'invalid_credentials')
      t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).statusCode, 200)
    })
    t.test('the policy applies to the new password, the account\'s name included', async (t) => {
      const user = await register(app)
      const { access } = await login(app, user)
      for (const [password, message] of [['short', /too short/], ['password123', /too common/], [user.username, /similar/], [user.email, /similar/]] as const) {
        const res = await postJson(app, '/api/auth/password', { current_password: user.password, new_password: password }, bearer(access))
        t.equal(res.statusCode, 400, password)
        t.match(res.json(), { code: 'validation_failed', errors: [{ field: 'new_password', message }] })
      }
    })
    t.test('success ends every other session, keeps this one, and the new password signs in', async (t) => {
      const first = await login(app)
      const second = await again(first.user)
      const res = await postJson(app, '/api/auth/password', { current_password: first.user.password, new_password: 'a brand new passphrase' }, bearer(first.access))
      t.equal(res.statusCode, 204)
      t.equal(await detail(first.access), 200, 'this session stays')
      t.equal(await detail(second.access), 401, 'the others end')
      t.equal(await refreshes(second.refresh), 401)
      t.equal((await postJson(app, '/api/auth/login', { identifier: first.user.username, password: first.user.password })).statusCode, 401, 'the old password is gone')
      t.equal((await postJson(app, '/api/auth/login', { identifier: first.user.username, password: 'a brand new passphrase' })).statusCode, 200)
    })
    t.test('it needs a signed-in session and a JSON body', async (t) => {
      t.equal((await postJson(app, '/api/auth/password', { current_password: 'x', new_password: 'y' })).statusCode, 401)
      const { access } = await login(app)
      const form = await app.inject({ method: 'POST', url: '/api/auth/password', payload: 'current_password=x&new_password=y', headers: { ...bearer(access), 'content-type': 'application/x-www-form-urlencoded' } })
      t.equal(form.statusCode, 415)
    })
  })
})

/** The cleanup service of an app's database, as the service and the CLI build it. */
const cleanupOf = (app: Awaited<ReturnType<typeof build>>) => createCleanup({ db: app.db, config: app.config, clock: app.clock, audit: app.audit, log: silentLogger })

t.test('tokens:flush deletes ended sessions and expired refresh tokens, and keeps what reuse detection needs', async (t) => {
  const clock = new TestClock()
  const database = await freshDatabase(t)
  const app = await build(t, { clock, database })
  const rotated = await login(app)
  const child = (await postJson(app, '/api/token/refresh', { refresh: rotated.refresh })).json()
  const revoked = await login(app)
  await postJson(app, '/api/auth/logout', {}, bearer(revoked.access))
  const live = await login(app)

  const count = async (table: 'sessions' | 'refresh_tokens'): Promise<number> =>
    Number((await app.db.selectFrom(table).select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n)
  t.equal(await count('sessions'), 3)
  t.equal(await count('refresh_tokens'), 4)

  // A day and a minute later: every refresh token of the first pairs has expired, and the
  // revoked session has been over for longer than any of its tokens could live.
  clock.advance(86400 + 60)
  const fresh = (await postJson(app, '/api/token/refresh', { refresh: live.refresh }))
  t.equal(fresh.statusCode, 401, 'expired')
  t.same(await cleanupOf(app).flush(), { refreshTokens: 4, sessions: 1, assertions: 0, oneTimeCodes: 0 })
  t.equal(await count('sessions'), 2, 'the revoked session is gone; the others, within their 30 days, stay')
  t.equal(claimsOf(child.refresh).sid, claimsOf(rotated.refresh).sid)
})

t.test('npm run tokens:flush prints what it deleted', async (t) => {
  // Its own database: on PGlite the command and a running service cannot share a data folder.
  const env = { ...await freshDatabase(t), SECRET_KEY }
  t.match(await runCli(['migrate'], env), { code: 0 })
  t.match(await runCli(['tokens:flush'], env), { code: 0, stdout: 'deleted 0 sessions, 0 refresh tokens, 0 spent client assertions and 0 spent or expired one-time secrets' })
})

t.test('a used refresh token survives the flush until it expires: reuse is still detected', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const { refresh, access } = await login(app)
  await postJson(app, '/api/token/refresh', { refresh })
  clock.advance(60)
  t.same(await cleanupOf(app).prune(), { refreshTokens: 0, sessions: 0, assertions: 0, oneTimeCodes: 0 })
  t.equal((await postJson(app, '/api/token/refresh', { refresh })).statusCode, 401, 'theft detected')
  t.equal((await app.inject({ url: '/api/detail', headers: bearer(access) })).statusCode, 401, 'the session is revoked')
})

t.test('one pruner at a time: a replica finding another at work skips the round', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'several replicas share PostgreSQL only'
}, async (t) => {
  const { default: pg } = await import('pg')
  const database = await freshDatabase(t)
  const app = await build(t, { database })
  const other = new pg.Client({ connectionString: database.DATABASE_URL })
  await other.connect()
  t.teardown(() => other.end())
  const { LOCK_KEYS } = await import('../src/db/locks.ts')
  await other.query('begin')
  await other.query(`select pg_advisory_xact_lock(${LOCK_KEYS.flush})`)
  t.equal(await cleanupOf(app).prune(), undefined, 'skipped while another holds the lock')
  await other.query('commit')
  t.same(await cleanupOf(app).prune(), { refreshTokens: 0, sessions: 0, assertions: 0, oneTimeCodes: 0 })
})

t.test('the service prunes on its own timer', async (t) => {
  const logLines: string[] = []
  const clock = new TestClock()
  const app = await build(t, { clock, logLines, env: { AUTH_PRUNE_INTERVAL: '1s', JWT_REFRESH_TOKEN_LIFETIME: '60' } })
  await login(app)
  clock.advance(120)
  // The timer runs on real time: wait for its first round (a hang after 30 s).
  await eventually(() => logLines.some((l) => l.includes('pruned ended sessions')))
  const pruned: unknown = logLines.map((l) => JSON.parse(l)).find((e) => e.msg === 'pruned ended sessions, spent client assertions and one-time secrets')
  t.match(pruned, { flushed: { refreshTokens: 1 } })
})

t.test('a refresh refuses a deactivated user, claims naming another user or an unknown token, and an ended session, and changes nothing', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const claims = (token: string): TokenClaims => claimsOf(token) as unknown as TokenClaims
  const unused = async (token: string): Promise<boolean> => (await app.db.selectFrom('refresh_tokens').select('used_at')
    .where('jti', '=', claims(token).jti).executeTakeFirstOrThrow()).used_at === null

  const other = await login(app)
  const { refresh } = await login(app)
  const caller = { device: { userAgent: null, ip: null } }
  await t.rejects(app.sessions.refresh({ ...claims(refresh), user_id: claims(other.refresh).user_id }, caller), TokenNotValidError, 'another user\'s id')
  await t.rejects(app.sessions.refresh({ ...claims(refresh), sid: claims(other.refresh).sid }, caller), TokenNotValidError, 'another session')
  await t.rejects(app.sessions.refresh({ ...claims(refresh), jti: randomUUID() }, caller), TokenNotValidError, 'an unknown token')
  t.ok(await unused(refresh), 'the token is still unused')
  t.equal((await postJson(app, '/api/token/refresh', { refresh })).statusCode, 200, 'and rotates')

  const inactive = await login(app)
  await app.db.updateTable('users').set({ is_active: false }).where('id', '=', claims(inactive.refresh).user_id).execute()
  t.equal((await postJson(app, '/api/token/refresh', { refresh: inactive.refresh })).statusCode, 401, 'a deactivated user')
  t.ok(await unused(inactive.refresh))

  const ended = await login(app)
  await app.db.updateTable('sessions').set({ expires_at: new Date(clock.now().getTime() - 1000) }).where('id', '=', claims(ended.refresh).sid).execute()
  t.equal((await postJson(app, '/api/token/refresh', { refresh: ended.refresh })).statusCode, 401, 'a session past its end')
  t.ok(await unused(ended.refresh))
})

t.test('a password change for a user whose row went away since the session was checked is refused, not a 500', async (t) => {
  const app = await build(t)
  const gone = { id: 2_000_000_000, username: 'gone', email: 'gone@example.com', roles: [], email_verified_at: null, sessionId: randomUUID() }
  await t.rejects(app.accounts.changePassword(gone, 'any old password', 'a brand new passphrase', { device: { userAgent: null, ip: null } }), { statusCode: 401, code: 'INVALID_CREDENTIALS' })
})
