import t from 'tap'
import { TokenNotValidError } from '../src/errors.ts'
import type { KyselyPlugin } from 'kysely'
import { createSessions } from '../src/services/sessions/sessions.ts'
import type { TokenClaims } from '../src/services/auth/claims.ts'
import { bearer, build, claimsOf, login, postJson, refreshCookie, register, TestClock } from './helper.ts'

t.test('token endpoints', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })

  t.test('POST /api/token answers a pair without cookies, with and without the slash', async (t) => {
    const user = await register(app)
    for (const url of ['/api/token', '/api/token/']) {
      const res = await postJson(app, url, { username: user.username, password: user.password })
      t.equal(res.statusCode, 200, url)
      t.same(Object.keys(res.json()).sort(), ['access', 'refresh'])
      t.equal(res.headers['set-cookie'], undefined)
    }
    const wrong = await postJson(app, '/api/token', { username: user.username, password: 'wrong password here' })
    t.equal(wrong.statusCode, 401)
    t.equal(wrong.json().code, 'invalid_credentials')
  })

  t.test('tokens carry the simplejwt claims and the added ones', async (t) => {
    const { access, refresh, user } = await login(app)
    const a = claimsOf(access)
    const r = claimsOf(refresh)
    t.match(a, { token_type: 'access', user_id: user.id, sub: String(user.id), sid: String, jti: String, iat: Number, exp: Number, iss: 'http://localhost:3000', aud: 'authgate' })
    t.match(r, { token_type: 'refresh', user_id: user.id, sid: a.sid })
    t.equal((a.exp as number) - (a.iat as number), 300)
    t.equal((r.exp as number) - (r.iat as number), 86400)
    t.not(a.jti, r.jti)
    t.equal(r.sxp, (r.iat as number) + 30 * 86400, 'the refresh token names the session\'s end')
    t.notOk('sxp' in a, 'the access token does not')
    const header = JSON.parse(Buffer.from(access.split('.')[0]!, 'base64url').toString())
    t.same(Object.keys(header).sort(), ['alg', 'kid', 'typ'])
    t.match(header, { alg: 'ES256', typ: 'at+jwt', kid: app.keyring.jwks.keys[0]!.kid }, 'RFC 9068 access token')
    const refreshHeader = JSON.parse(Buffer.from(refresh.split('.')[0]!, 'base64url').toString())
    t.match(refreshHeader, { alg: 'HS256', kid: 'refresh' }, 'refresh tokens: a key no JWKS publishes')
    t.notOk(app.keyring.jwks.keys.some((k) => k.kid === refreshHeader.kid))
  })

  t.test('refresh with the body rotates the pair and sets no cookies', async (t) => {
    const { refresh } = await login(app)
    const res = await postJson(app, '/api/token/refresh', { refresh })
    t.equal(res.statusCode, 200)
    const pair = res.json()
    t.same(Object.keys(pair).sort(), ['access', 'refresh'])
    t.not(pair.refresh, refresh)
    t.equal(claimsOf(pair.refresh).sid, claimsOf(refresh).sid, 'same session')
    t.equal(res.headers['set-cookie'], undefined)
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(pair.access) })).statusCode, 200)
    t.equal((await postJson(app, '/api/token/refresh/', { refresh: pair.refresh })).statusCode, 200, 'the new one refreshes, with a slash too')
  })

  t.test('refresh with the cookies login set rotates and sets them again', async (t) => {
    const user = await register(app)
    const loginRes = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
    const cookie = (loginRes.headers['set-cookie'] as string[]).filter((c) => !c.startsWith('__Host-access_token=')).map((c) => c.split(';')[0]).join('; ')
    const res = await postJson(app, '/api/token/refresh', {}, { cookie })
    t.equal(res.statusCode, 200)
    const setCookies = res.headers['set-cookie'] as string[]
    t.equal(setCookies.length, 3)
    t.ok(setCookies.some((c) => c.startsWith(`__Secure-refresh_token=${res.json().refresh};`)))
    t.ok(setCookies.some((c) => c.startsWith(`__Host-access_token=${res.json().access};`)))
    t.ok(setCookies.some((c) => c.startsWith(`${cookie.split('; ')[1]!}; Max-Age=86400; Path=/;`)), 'the binding again, its life the new refresh token\'s')
  })

  t.test('a refresh cookie sent twice (cookie tossing) is refused, and the browser told to drop the site\'s cookies: no session swap', async (t) => {
    const victim = await login(app)
    const attacker = await login(app)
    const res = await postJson(app, '/api/token/refresh', {}, { cookie: `__Secure-refresh_token=${attacker.refresh}; ${refreshCookie(victim.refresh)}` })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_not_valid')
    t.match((res.headers['set-cookie'] as string[]).join('\n'), /__Secure-refresh_token=;.*Expires=Thu, 01 Jan 1970/)
    // Clearing its own cookies would leave the planted one (Domain=parent) behind: Clear-Site-Data takes it too.
    t.equal(res.headers['clear-site-data'], '"cookies"')
    t.equal((await postJson(app, '/api/token/refresh', { refresh: attacker.refresh })).statusCode, 200, 'neither token was used')
    t.equal((await postJson(app, '/api/token/refresh', { refresh: victim.refresh })).statusCode, 200)
  })

  t.test('a refresh cookie is taken only beside the binding of its own session, which no other host can set', async (t) => {
    const victim = await login(app)
    const attacker = await login(app)
    const [attackerToken, attackerBinding] = refreshCookie(attacker.refresh).split('; ')
    const victimBinding = refreshCookie(victim.refresh).split('; ')[1]!
    // The planted cookie alone, once the victim's own was cleared; with the victim's binding; with none.
    for (const [why, cookie] of [
      ['the victim\'s binding', `${attackerToken!}; ${victimBinding}`],
      ['no binding', attackerToken!],
      ['a binding from another host (not __Host-)', `${attackerToken!}; refresh_binding=${attackerBinding!.split('=')[1]!}`]
    ] as const) {
      const res = await postJson(app, '/api/token/refresh', {}, { cookie })
      t.equal(res.statusCode, 401, why)
      t.equal(res.headers['clear-site-data'], '"cookies"', why)
      t.match((res.headers['set-cookie'] as string[]).join('\n'), /__Host-refresh_binding=;.*Expires=Thu, 01 Jan 1970/, why)
    }
    const blacklisted = await postJson(app, '/api/token/blacklist', {}, { cookie: `${attackerToken!}; ${victimBinding}` })
    t.equal(blacklisted.statusCode, 401, 'blacklist takes the same cookie only so')
    t.equal((await postJson(app, '/api/token/refresh', {}, { cookie: refreshCookie(attacker.refresh) })).statusCode, 200, 'with its own binding it refreshes')
    t.equal((await postJson(app, '/api/token/refresh', { refresh: victim.refresh })).statusCode, 200, 'a token in the body needs no cookie binding')
  })

  t.test('refresh without any token: 401 not_authenticated', async (t) => {
    const res = await postJson(app, '/api/token/refresh', {})
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'not_authenticated')
  })

  t.test('an access token cannot refresh', async (t) => {
    const { access } = await login(app)
    const res = await postJson(app, '/api/token/refresh', { refresh: access })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_not_valid')
  })

  t.test('a used token presented again within the grace gets the same child pair', async (t) => {
    const { refresh } = await login(app)
    const first = await postJson(app, '/api/token/refresh', { refresh })
    clock.advance(9)
    const again = await postJson(app, '/api/token/refresh', { refresh })
    t.equal(again.statusCode, 200)
    t.same(again.json(), first.json())
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(first.json().access) })).statusCode, 200, 'the session lives on')
  })

  t.test('a used refresh token revokes the session after the grace period', async (t) => {
    const { refresh, access } = await login(app)
    const first = await postJson(app, '/api/token/refresh', { refresh })
    t.equal(first.statusCode, 200)
    clock.advance(11)
    const reuse = await postJson(app, '/api/token/refresh', { refresh })
    t.equal(reuse.statusCode, 401)
    t.equal(reuse.json().code, 'token_not_valid')
    const sid = claimsOf(refresh).sid as string
    const session = await app.db.selectFrom('sessions').select('revoked_at').where('id', '=', sid).executeTakeFirstOrThrow()
    t.type(session.revoked_at, Date, 'the revocation is committed')
    for (const token of [access, first.json().access]) {
      t.equal((await app.inject({ url: '/api/detail', headers: bearer(token) })).statusCode, 401, 'every access token of the session stops')
    }
    t.equal((await postJson(app, '/api/token/refresh', { refresh: first.json().refresh })).statusCode, 401, 'the child is dead too')
  })

  t.test('reuse through the cookie clears the cookies', async (t) => {
    const { refresh } = await login(app)
    await postJson(app, '/api/token/refresh', { refresh })
    clock.advance(11)
    const res = await postJson(app, '/api/token/refresh', {}, { cookie: refreshCookie(refresh) })
    t.equal(res.statusCode, 401)
    t.match((res.headers['set-cookie'] as string[]).join('\n'), /__Secure-refresh_token=;.*Expires=Thu, 01 Jan 1970/)
  })

  t.test('concurrent refreshes of one token never mint two families', async (t) => {
    const { refresh } = await login(app)
    const results = await Promise.all(Array.from({ length: 10 }, () => postJson(app, '/api/token/refresh', { refresh })))
    t.same(results.map((r) => r.statusCode), Array(10).fill(200))
    const children = new Set(results.map((r) => r.json().refresh))
    t.equal(children.size, 1, 'every caller got the one child pair')
    const rows = await app.db.selectFrom('refresh_tokens').select('jti').where('session_id', '=', claimsOf(refresh).sid as string).execute()
    t.equal(rows.length, 2, 'the parent and one child')
  })

  t.test('an expired refresh token is refused with token_expired', async (t) => {
    const { refresh } = await login(app)
    clock.advance(-86400 - 60)
    const old = await login(app)
    clock.advance(86400 + 60)
    const res = await postJson(app, '/api/token/refresh', { refresh: old.refresh })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_expired')
    t.equal((await postJson(app, '/api/token/refresh', { refresh })).statusCode, 200)
  })

  t.test('no access token outlives its session', async (t) => {
    const short = await build(t, { clock, env: { AUTH_SESSION_MAX_LIFETIME: '2m', JWT_ACCESS_TOKEN_LIFETIME: '5m' } })
    const { access, refresh } = await login(short)
    t.equal((claimsOf(access).exp as number) - (claimsOf(access).iat as number), 120, 'capped at the session\'s end')
    clock.advance(60)
    const res = await postJson(short, '/api/token/refresh', { refresh })
    t.equal(res.statusCode, 200)
    t.ok((claimsOf(res.json().access).exp as number) <= (claimsOf(access).exp as number), 'a refreshed one too')
    clock.advance(61)
    t.equal((await short.inject({ url: '/api/detail', headers: bearer(res.json().access) })).statusCode, 401, 'dead when the session ends')
  })

  t.test('a session cannot be refreshed past its absolute lifetime (30 days)', async (t) => {
    const { refresh } = await login(app)
    const sessionEnd = (claimsOf(refresh).iat as number) + 30 * 86400
    let token = refresh
    let refreshes = 0
    for (;;) {
      clock.advance(86400 - 60)
      const res = await postJson(app, '/api/token/refresh', { refresh: token })
      if (res.statusCode !== 200) {
        t.equal(res.statusCode, 401)
        break
      }
      token = res.json().refresh
      refreshes++
      t.ok((claimsOf(token).exp as number) <= sessionEnd, 'no refresh token outlives the session')
    }
    t.equal(refreshes, 30, 'a refresh a day for 30 days, then no more')
  })

  t.test('verify answers {} for a live token of either type', async (t) => {
    const { access, refresh } = await login(app)
    for (const token of [access, refresh]) {
      const res = await postJson(app, '/api/token/verify', { token })
      t.equal(res.statusCode, 200)
      t.same(res.json(), {})
    }
    t.equal((await postJson(app, '/api/token/verify/', { token: access })).statusCode, 200)
  })

  t.test('verify answers 401 for a refresh token already rotated', async (t) => {
    const { refresh } = await login(app)
    t.equal((await postJson(app, '/api/token/refresh', { refresh })).statusCode, 200)
    const res = await postJson(app, '/api/token/verify', { token: refresh })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_not_valid')
  })

  t.test('tokens expire by the clock: access after 5 minutes, refresh after a day', async (t) => {
    const { access, refresh } = await login(app)
    clock.advance(299)
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(access) })).statusCode, 200)
    clock.advance(1)
    const expired = await app.inject({ url: '/api/detail', headers: bearer(access) })
    t.equal(expired.statusCode, 401)
    t.equal(expired.json().code, 'token_expired')
    clock.advance(86400 - 300)
    const res = await postJson(app, '/api/token/refresh', { refresh })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_expired')
  })

  t.test('a refresh cookie that can no longer refresh is cleared', async (t) => {
    const { refresh } = await login(app)
    await app.db.updateTable('sessions').set({ revoked_at: new Date() }).where('id', '=', claimsOf(refresh).sid as string).execute()
    const res = await postJson(app, '/api/token/refresh', {}, { cookie: refreshCookie(refresh) })
    t.equal(res.statusCode, 401)
    const cleared = (res.headers['set-cookie'] as string[]).join('\n')
    t.match(cleared, /__Secure-refresh_token=;.*Expires=Thu, 01 Jan 1970/)
    t.match(cleared, /__Host-access_token=;.*Expires=Thu, 01 Jan 1970/)
  })

  t.test('verify answers 401 for a token of a revoked session and for garbage', async (t) => {
    const { access } = await login(app)
    await app.db.updateTable('sessions').set({ revoked_at: new Date() }).where('id', '=', claimsOf(access).sid as string).execute()
    const revoked = await postJson(app, '/api/token/verify', { token: access })
    t.equal(revoked.statusCode, 401)
    t.equal(revoked.json().code, 'token_not_valid')
    const garbage = await postJson(app, '/api/token/verify', { token: 'a.b.c' })
    t.equal(garbage.statusCode, 401)
    t.equal(garbage.json().code, 'token_not_valid')
  })
  // A refresh token as issued before refresh tokens named their session's end (sxp).
  const withoutSessionEnd = (token: string): string => {
    const { iss: _iss, aud: _aud, sxp: _sxp, ...claims } = claimsOf(token)
    return app.keyring.sign(claims as Omit<TokenClaims, 'iss' | 'aud'>)
  }

  t.test('a refresh token issued before sxp still rotates, retries within the grace, and trips reuse detection', async (t) => {
    const { refresh } = await login(app)
    const old = withoutSessionEnd(refresh)
    t.notOk('sxp' in claimsOf(old))
    const first = await postJson(app, '/api/token/refresh', { refresh: old })
    t.equal(first.statusCode, 200)
    t.equal(claimsOf(first.json().refresh).sxp, claimsOf(refresh).sxp, 'its successor names the session\'s end')
    t.ok((claimsOf(first.json().access).exp as number) <= (claimsOf(refresh).sxp as number))
    t.same((await postJson(app, '/api/token/refresh', { refresh: old })).json(), first.json(), 'a retry within the grace gets the same pair')
    clock.advance(11)
    t.equal((await postJson(app, '/api/token/refresh', { refresh: old })).statusCode, 401, 'after the grace: reuse')
    t.equal((await postJson(app, '/api/token/refresh', { refresh: first.json().refresh })).statusCode, 401, 'and the session is revoked')
  })

  t.test('a session whose end was brought forward after the token was issued caps the next pair at its new end', async (t) => {
    const { refresh } = await login(app)
    const sid = claimsOf(refresh).sid as string
    const end = Math.floor(clock.now().getTime() / 1000) + 120
    await app.db.updateTable('sessions').set({ expires_at: new Date(end * 1000) }).where('id', '=', sid).execute()
    const res = await postJson(app, '/api/token/refresh', { refresh })
    t.equal(res.statusCode, 200)
    const pair = res.json()
    t.equal(claimsOf(pair.refresh).sxp, end, 'the new refresh token names the new end')
    t.equal(claimsOf(pair.refresh).exp, end, 'and expires with it')
    t.equal(claimsOf(pair.access).exp, end, 'so does the access token')
    t.equal((await postJson(app, '/api/token/refresh', { refresh: pair.refresh })).statusCode, 200, 'the next refresh takes one call again')
  })

  t.test('a refresh is one database call; a token without sxp takes two', async (t) => {
    const queries: string[] = []
    const counter: KyselyPlugin = {
      transformQuery: (args) => { queries.push(args.node.kind); return args.node },
      transformResult: async (args) => args.result
    }
    const sessions = createSessions({ db: app.db.withPlugin(counter), keyring: app.keyring, clock, config: app.config, audit: app.audit })
    const verified = (token: string): TokenClaims => claimsOf(token) as unknown as TokenClaims
    const caller = { device: { userAgent: null, ip: null } }

    const { refresh } = await login(app)
    const rotated = await sessions.refresh(verified(refresh), caller)
    t.match(rotated, { access: String, refresh: String })
    t.same(queries, ['RawNode'], 'a rotation: one statement, no transaction around it')
    queries.length = 0
    t.same(await sessions.refresh(verified(refresh), caller), rotated, 'a retry within the grace: the same pair')
    t.equal(queries.length, 1, 'in one statement')

    const legacy = await login(app)
    queries.length = 0
    t.match(await sessions.refresh(verified(withoutSessionEnd(legacy.refresh)), caller), { access: String, refresh: String })
    t.equal(queries.length, 2, 'without sxp: one call reads the session\'s end, one rotates')

    queries.length = 0
    clock.advance(11)
    await t.rejects(sessions.refresh(verified(refresh), caller), TokenNotValidError, 'reused')
    t.equal(queries.length, 1, 'reuse detection: one statement, and the revocation is committed')
    t.type((await app.db.selectFrom('sessions').select('revoked_at').where('id', '=', claimsOf(refresh).sid as string).executeTakeFirstOrThrow()).revoked_at, Date)
  })
})

t.test('answers with tokens or an identity are never cached (RFC 6749 §5.1); only the keys and a fixed discovery document may be', async (t) => {
  const app = await build(t, { env: { PUBLIC_URL: 'https://auth.example.com' } })
  const { access, refresh, user } = await login(app)
  const bearer = { authorization: `Bearer ${access}` }
  const answers = {
    login: await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password }),
    token: await postJson(app, '/api/token', { username: user.username, password: user.password }),
    refresh: await postJson(app, '/api/token/refresh', { refresh }),
    detail: await app.inject({ url: '/api/detail', headers: bearer }),
    sessions: await app.inject({ url: '/api/auth/sessions', headers: bearer }),
    check: await app.inject({ url: '/api/auth/check', headers: bearer }),
    'a 401': await app.inject({ url: '/api/detail' })
  }
  for (const [what, res] of Object.entries(answers)) {
    t.ok(res.statusCode < 500, what)
    t.equal(res.headers['cache-control'], 'no-store', what)
  }
  t.equal((await app.inject({ url: '/.well-known/jwks.json' })).headers['cache-control'], 'public, max-age=300')
  t.equal((await app.inject({ url: '/.well-known/openid-configuration' })).headers['cache-control'], 'public, max-age=300')
})
