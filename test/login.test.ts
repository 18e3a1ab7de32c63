import t from 'tap'
import { build, claimsOf, freshDatabase, postJson, register, uniqueUser } from './helper.ts'

function cookieMap (setCookie: string | string[] | undefined): Map<string, string> {
  const list = Array.isArray(setCookie) ? setCookie : setCookie === undefined ? [] : [setCookie]
  return new Map(list.map((c) => [c.slice(0, c.indexOf('=')), c]))
}

t.test('login', async (t) => {
  const app = await build(t)
  const user = await register(app)

  t.test('by username answers the pair and sets both cookies with the designed attributes', async (t) => {
    const res = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
    t.equal(res.statusCode, 200)
    const body = res.json()
    t.same(Object.keys(body).sort(), ['access', 'refresh'])
    const cookies = cookieMap(res.headers['set-cookie'])
    t.same([...cookies.keys()].sort(), ['__Host-access_token', '__Host-refresh_binding', '__Secure-refresh_token'])
    t.equal(cookies.get('__Host-access_token'), `__Host-access_token=${body.access}; Max-Age=300; Path=/; HttpOnly; Secure; SameSite=Lax`)
    t.equal(cookies.get('__Secure-refresh_token'), `__Secure-refresh_token=${body.refresh}; Max-Age=86400; Path=/api/token; HttpOnly; Secure; SameSite=Lax`)
    t.match(cookies.get('__Host-refresh_binding'), /^__Host-refresh_binding=[A-Za-z0-9_-]{43}; Max-Age=86400; Path=\/; HttpOnly; Secure; SameSite=Lax$/, 'the refresh cookie\'s binding to this host')
  })

  t.test('by email in any case, and with a trailing slash', async (t) => {
    const res = await postJson(app, '/api/auth/login/', { identifier: user.email.toUpperCase(), password: user.password })
    t.equal(res.statusCode, 200)
    t.equal(claimsOf(res.json().access).user_id, user.id)
  })

  t.test('by username in another case', async (t) => {
    const res = await postJson(app, '/api/auth/login', { identifier: user.username.toUpperCase(), password: user.password })
    t.equal(res.statusCode, 200)
  })

  t.test('records the last login', async (t) => {
    const row = await app.db.selectFrom('users').select('last_login_at').where('id', '=', user.id).executeTakeFirstOrThrow()
    t.type(row.last_login_at, Date)
  })

  t.test('a wrong password and an unknown user get the same answer', async (t) => {
    const wrong = await postJson(app, '/api/auth/login', { identifier: user.username, password: 'not the password at all' })
    const unknown = await postJson(app, '/api/auth/login', { identifier: 'nobody-at-all', password: 'not the password at all' })
    const unknownEmail = await postJson(app, '/api/auth/login', { identifier: 'nobody@example.com', password: 'whatever it is' })
    for (const res of [wrong, unknown, unknownEmail]) {
      t.equal(res.statusCode, 401)
      t.equal(res.headers['www-authenticate'], 'Bearer realm="authgate"')
      t.equal(res.headers['set-cookie'], undefined)
    }
    t.same(wrong.json(), unknown.json())
    t.same(wrong.json(), {
      type: 'about:blank',
      title: 'Unauthorized',
      status: 401,
      detail: 'No active account found with the given credentials',
      code: 'invalid_credentials'
    })
  })

  t.test('a password over 72 bytes never matches on its first 72 (bcrypt truncation)', async (t) => {
    const password = 'é'.repeat(36)
    const long = await register(app, { ...uniqueUser(), password })
    t.equal((await postJson(app, '/api/auth/login', { identifier: long.username, password })).statusCode, 200)
    const res = await postJson(app, '/api/auth/login', { identifier: long.username, password: password + 'XYZ' })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'invalid_credentials')
  })

  t.test('an inactive account cannot sign in', async (t) => {
    const inactive = await register(app)
    await app.db.updateTable('users').set({ is_active: false }).where('id', '=', inactive.id).execute()
    const res = await postJson(app, '/api/auth/login', { identifier: inactive.username, password: inactive.password })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'invalid_credentials')
  })

  t.test('a hash of another bcrypt cost is upgraded on login', async (t) => {
    const other = await register(app)
    const { default: bcrypt } = await import('bcrypt')
    await app.db.updateTable('users').set({ password_hash: await bcrypt.hash(other.password, 5) }).where('id', '=', other.id).execute()
    t.equal((await postJson(app, '/api/auth/login', { identifier: other.username, password: other.password })).statusCode, 200)
    const row = await app.db.selectFrom('users').select('password_hash').where('id', '=', other.id).executeTakeFirstOrThrow()
    t.match(row.password_hash, /^\$2b\$04\$/)
  })
})

t.test('cookie attributes follow the configuration', async (t) => {
  const app = await build(t, { env: { COOKIE_SECURE: 'false', COOKIE_SAMESITE: 'strict', JWT_ACCESS_TOKEN_LIFETIME: '15m', JWT_REFRESH_TOKEN_LIFETIME: '7d' } })
  const user = await register(app)
  const res = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
  const cookies = cookieMap(res.headers['set-cookie'])
  t.same([...cookies.keys()].sort(), ['access_token', 'refresh_binding', 'refresh_token'], 'no prefixes without Secure')
  t.match(cookies.get('access_token'), /; Max-Age=900; Path=\/; HttpOnly; SameSite=Strict$/)
  t.match(cookies.get('refresh_token'), /; Max-Age=604800; Path=\/api\/token; HttpOnly; SameSite=Strict$/)
  const { exp, iat } = claimsOf(res.json().access) as { exp: number, iat: number }
  t.equal(exp - iat, 900)
})

t.test('with COOKIE_DOMAIN the access cookie takes __Secure-, as __Host- forbids a domain', async (t) => {
  const app = await build(t, { env: { COOKIE_DOMAIN: 'example.com', COOKIE_SAMESITE: 'none' } })
  const user = await register(app)
  const res = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
  const cookies = cookieMap(res.headers['set-cookie'])
  t.match(cookies.get('__Secure-access_token'), /; Domain=example.com; Path=\/; HttpOnly; Secure; SameSite=None$/)
  t.match(cookies.get('__Secure-refresh_token'), /; Domain=example.com; Path=\/api\/token; HttpOnly; Secure; SameSite=None$/)
  t.match(cookies.get('__Host-refresh_binding'), /; Max-Age=86400; Path=\/; HttpOnly; Secure; SameSite=None$/, 'the binding stays the host\'s own: no Domain')
})

t.test('a sign-in whose password check overlaps a password change gets no session that outlives the change', async (t) => {
  const app = await build(t)
  const user = await register(app)
  const hashOf = async (): Promise<string> => (await app.db.selectFrom('users').select('password_hash').where('id', '=', user.id).executeTakeFirstOrThrow()).password_hash!
  const checked = await hashOf()
  // The change lands after the sign-in checked the old password and before its session starts.
  const changer = (await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).json()
  const change = await postJson(app, '/api/auth/password', { current_password: user.password, new_password: 'an entirely new passphrase' }, { authorization: `Bearer ${changer.access}` })
  t.equal(change.statusCode, 204)
  await t.rejects(app.sessions.start({ userId: user.id, passwordHash: checked, roles: [] }, { userAgent: null, ip: null }, { aal: 'aal1', amr: ['pwd'], auth_time: 0 }), { code: 'INVALID_CREDENTIALS' }, 'the session does not start')
  t.equal((await app.db.selectFrom('sessions').select('id').where('user_id', '=', user.id).where('revoked_at', 'is', null).execute()).length, 1, 'only the changer\'s session is open')
})

t.test('a sign-in waiting on a password change that holds the user row is refused once the change commits', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'another connection holding a row lock needs PostgreSQL'
}, async (t) => {
  const { default: pg } = await import('pg')
  const database = await freshDatabase(t)
  const app = await build(t, { database })
  const user = await register(app)
  const change = new pg.Client({ connectionString: database.DATABASE_URL })
  await change.connect()
  t.teardown(() => change.end())
  // As accounts.changePassword's transaction does: the new hash written, not yet committed.
  await change.query('begin')
  await change.query("update users set password_hash = '$2b$04$changedchangedchangedchOg4rDcUoV7d0H3Hwn9mVdUlRcMzJw5C' where id = $1", [user.id])
  const signIn = postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
  // The sign-in checks the old password meanwhile, then waits for the row.
  await new Promise((resolve) => setTimeout(resolve, 300))
  await change.query('commit')
  const res = await signIn
  t.equal(res.statusCode, 401, 'refused: the hash it checked is gone')
  t.match(res.json(), { code: 'invalid_credentials' })
  t.equal((await app.db.selectFrom('sessions').select('id').where('user_id', '=', user.id).execute()).length, 0, 'no session was started')
})
