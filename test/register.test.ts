import t from 'tap'
import { build, postJson, uniqueUser } from './helper.ts'

t.test('register', async (t) => {
  const app = await build(t)

  t.test('creates the account and answers the seed body', async (t) => {
    const user = uniqueUser()
    const res = await postJson(app, '/api/auth/register', user)
    t.equal(res.statusCode, 201)
    const body = res.json()
    t.same(Object.keys(body).sort(), ['message', 'user'])
    t.equal(body.message, 'User registered successfully')
    t.same(Object.keys(body.user).sort(), ['email', 'id', 'username'])
    t.match(body.user, { username: user.username, email: user.email, id: Number })
    const row = await app.db.selectFrom('users').select('password_hash').where('id', '=', body.user.id).executeTakeFirstOrThrow()
    t.match(row.password_hash, /^\$2b\$04\$/, 'stored as a bcrypt hash of the configured cost')
  })

  t.test('answers with and without the trailing slash', async (t) => {
    t.equal((await postJson(app, '/api/auth/register/', uniqueUser())).statusCode, 201)
  })

  t.test('refuses a username taken in another case', async (t) => {
    const user = uniqueUser('Case')
    t.equal((await postJson(app, '/api/auth/register', user)).statusCode, 201)
    const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), username: user.username.toUpperCase() })
    t.equal(res.statusCode, 409)
    t.match(res.json(), { code: 'username_taken', status: 409, detail: String })
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  })

  t.test('refuses an email taken in another case', async (t) => {
    const user = uniqueUser()
    t.equal((await postJson(app, '/api/auth/register', user)).statusCode, 201)
    const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), email: user.email.toUpperCase() })
    t.equal(res.statusCode, 409)
    t.equal(res.json().code, 'email_taken')
  })

  t.test('normalises usernames with NFKC, so look-alike forms collide', async (t) => {
    const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), username: 'ｆｕｌｌｗｉｄｔｈ' })
    t.equal(res.statusCode, 201)
    t.equal(res.json().user.username, 'fullwidth')
    const again = await postJson(app, '/api/auth/register', { ...uniqueUser(), username: 'FullWidth' })
    t.equal(again.statusCode, 409)
  })

  t.test('a decomposed username is normalised before it is judged, at register and at login alike', async (t) => {
    const decomposed = `E\u0301mile${process.pid}`
    const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), username: decomposed })
    t.equal(res.statusCode, 201)
    t.equal(res.json().user.username, decomposed.normalize('NFKC'))
    for (const identifier of [decomposed, decomposed.normalize('NFC'), decomposed.toUpperCase()]) {
      const login = await postJson(app, '/api/auth/login', { identifier, password: 'correct horse battery staple' })
      t.equal(login.statusCode, 200, JSON.stringify(identifier))
    }
    const again = await postJson(app, '/api/auth/register', { ...uniqueUser(), username: decomposed.normalize('NFC') })
    t.equal(again.statusCode, 409, 'the composed form is the same name')
  })

  t.test('refuses a username that NFKC turns into refused characters', async (t) => {
    const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), username: 'half½' })
    t.equal(res.statusCode, 400)
    t.match(res.json().errors, [{ field: 'username' }])
  })

  t.test('refuses usernames with @, spaces or other characters', async (t) => {
    for (const username of ['a@b', 'with space', 'semi;colon', '']) {
      const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), username })
      t.equal(res.statusCode, 400, username)
      t.match(res.json(), { code: 'validation_failed', errors: [{ field: 'username' }] })
    }
  })

  t.test('refuses an invalid email', async (t) => {
    const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), email: 'not-an-email' })
    t.equal(res.statusCode, 400)
    t.match(res.json().errors, [{ field: 'email' }])
  })

  t.test('applies the password policy', async (t) => {
    const cases: Array<[string, (u: ReturnType<typeof uniqueUser>) => string, RegExp]> = [
      ['too short', () => 'Ab1!xyz', /too short/],
      ['over 72 bytes, though only 37 characters', () => 'é'.repeat(37), /too long/],
      ['common', () => 'password123', /too common/],
      ['common in another case', () => 'PassWord123', /too common/],
      ['equal to the username', (u) => u.username, /similar/],
      ['equal to the email', (u) => u.email, /similar/]
    ]
    for (const [name, password, message] of cases) {
      const user = uniqueUser()
      const res = await postJson(app, '/api/auth/register', { ...user, password: password(user) })
      t.equal(res.statusCode, 400, name)
      t.match(res.json(), { code: 'validation_failed', errors: [{ field: 'password', message }] }, name)
    }
  })

  t.test('accepts a password of exactly 72 bytes', async (t) => {
    const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), password: 'é'.repeat(36) })
    t.equal(res.statusCode, 201)
  })

  t.test('20 concurrent registrations of one name give one 201 and 409s', async (t) => {
    const name = uniqueUser('race').username
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      postJson(app, '/api/auth/register', { username: name, email: `${name}-${i}@example.com`, password: 'correct horse battery staple' })))
    const statuses = results.map((r) => r.statusCode)
    t.equal(statuses.filter((s) => s === 201).length, 1, 'one created')
    t.equal(statuses.filter((s) => s === 409).length, 19, 'the rest conflict')
    t.ok(results.filter((r) => r.statusCode === 409).every((r) => r.json().code === 'username_taken'))
  })

  t.test('20 concurrent registrations of one email give one 201 and 409s', async (t) => {
    const email = uniqueUser('race').email
    const results = await Promise.all(Array.from({ length: 20 }, () =>
      postJson(app, '/api/auth/register', { ...uniqueUser(), email })))
    const statuses = results.map((r) => r.statusCode)
    t.equal(statuses.filter((s) => s === 201).length, 1)
    t.equal(statuses.filter((s) => s === 409).length, 19)
  })
})
