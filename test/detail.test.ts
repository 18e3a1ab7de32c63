import t from 'tap'
import { build, login, postJson, TestClock } from './helper.ts'

t.test('detail', async (t) => {
  const app = await build(t)

  t.test('answers the user of a Bearer access token', async (t) => {
    const { access, user } = await login(app)
    const res = await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })
    t.equal(res.statusCode, 200)
    t.same(res.json(), { message: 'Welcome to Page', user: { id: user.id, username: user.username, email: user.email, email_verified: false } })
  })

  t.test('answers with a trailing slash and a lower-case scheme', async (t) => {
    const { access } = await login(app)
    const res = await app.inject({ url: '/api/detail/', headers: { authorization: `bearer ${access}` } })
    t.equal(res.statusCode, 200)
  })

  t.test('answers the user of the access cookie', async (t) => {
    const { user } = await login(app)
    const res = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
    const cookie = (res.headers['set-cookie'] as string[]).find((c) => c.startsWith('__Host-access_token='))!.split(';')[0]!
    const detail = await app.inject({ url: '/api/detail', headers: { cookie } })
    t.equal(detail.statusCode, 200)
    t.equal(detail.json().user.id, user.id)
  })

  t.test('an access cookie sent twice (cookie tossing) is refused and cleared, never guessed', async (t) => {
    const victim = await login(app)
    const attacker = await login(app)
    for (const cookie of [
      `__Host-access_token=${attacker.access}; __Host-access_token=${victim.access}`,
      `__Host-access_token=${victim.access}; other=1; __Host-access_token=${victim.access}`
    ]) {
      const res = await app.inject({ url: '/api/detail', headers: { cookie } })
      t.equal(res.statusCode, 401)
      t.equal(res.json().code, 'token_not_valid')
      t.match((res.headers['set-cookie'] as string[]).join('\n'), /__Host-access_token=;.*Expires=Thu, 01 Jan 1970/)
    }
  })

  t.test('without credentials: 401 not_authenticated with a bare Bearer challenge', async (t) => {
    const res = await app.inject({ url: '/api/detail' })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'not_authenticated')
    t.equal(res.headers['www-authenticate'], 'Bearer realm="authgate"')
  })

  t.test('a malformed Authorization header: 401 token_not_valid, error="invalid_token"', async (t) => {
    for (const authorization of ['Bearer', 'Basic dXNlcjpwYXNz', 'Bearer a b', 'Token abc', 'Bearer not-a-jwt']) {
      const res = await app.inject({ url: '/api/detail', headers: { authorization } })
      t.equal(res.statusCode, 401, authorization)
      t.equal(res.json().code, 'token_not_valid', authorization)
      t.match(res.headers['www-authenticate'], /^Bearer realm="authgate", error="invalid_token"/)
    }
  })

  t.test('a refresh token is not an access token', async (t) => {
    const { refresh } = await login(app)
    const res = await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${refresh}` } })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_not_valid')
  })

  t.test('a deactivated user is refused at once', async (t) => {
    const { access, user } = await login(app)
    await app.db.updateTable('users').set({ is_active: false }).where('id', '=', user.id).execute()
    const res = await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })
    t.equal(res.statusCode, 401)
  })

  t.test('a revoked session is refused at once', async (t) => {
    const { access } = await login(app)
    const { sid } = JSON.parse(Buffer.from(access.split('.')[1]!, 'base64url').toString())
    await app.db.updateTable('sessions').set({ revoked_at: new Date() }).where('id', '=', sid).execute()
    const res = await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_not_valid')
  })
})

t.test('a token verified before is still checked on every request: expiry, session, the token itself', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const { access } = await login(app)
  const detail = async (token: string) => await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${token}` } })
  t.equal((await detail(access)).statusCode, 200)
  t.equal((await detail(access)).statusCode, 200, 'the second time from the verified tokens')
  // The same token with another signature is another text: verified again, and refused.
  const [header, payload, signature] = access.split('.')
  const forged = `${header}.${payload}.${signature!.slice(0, -4)}${signature!.slice(-4) === 'AAAA' ? 'BBBB' : 'AAAA'}`
  t.equal((await detail(forged)).statusCode, 401, 'a changed signature is refused')
  clock.advance(app.config.accessTtlS + 1)
  const expired = await detail(access)
  t.equal(expired.statusCode, 401)
  t.equal(expired.json().code, 'token_expired', 'its expiry is checked each time')
})
