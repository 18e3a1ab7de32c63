import t, { type Test } from 'tap'
import { build, postJson, uniqueUser } from './helper.ts'

const ENDPOINTS = ['/api/auth/register', '/api/auth/login', '/api/token', '/api/token/refresh', '/api/token/verify']

t.test('bad input always gets a 4xx problem, never a 500', async (t) => {
  const app = await build(t)

  function expectProblem (t: Test, res: Awaited<ReturnType<typeof postJson>>, status: number, code: string, why: string): void {
    t.equal(res.statusCode, status, why)
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8', why)
    const body = res.json()
    t.match(body, { type: 'about:blank', title: String, status, detail: String, code }, why)
    t.notMatch(res.body, /at .*\.(ts|js):\d+|SELECT|INSERT|node_modules/i, `no stack or SQL: ${why}`)
  }

  t.test('wrong types are refused, not coerced', async (t) => {
    const cases: Array<[string, unknown]> = [
      ['/api/auth/register', { username: 123, email: 'a@example.com', password: 'correct horse battery' }],
      ['/api/auth/register', { username: ['a'], email: 'a@example.com', password: 'correct horse battery' }],
      ['/api/auth/register', { username: 'okname', email: { $ne: null }, password: 'correct horse battery' }],
      ['/api/auth/login', { identifier: true, password: 'x' }],
      ['/api/auth/login', { identifier: 'x', password: null }],
      ['/api/token', { username: 'x', password: 12345678 }],
      ['/api/token/refresh', { refresh: 42 }],
      ['/api/token/verify', { token: { a: 1 } }]
    ]
    for (const [url, body] of cases) {
      const res = await postJson(app, url, body)
      expectProblem(t, res, 400, 'validation_failed', `${url} ${JSON.stringify(body)}`)
      t.ok(res.json().errors.length > 0)
    }
  })

  t.test('a token that is not a JWT: 401 token_not_valid, as simplejwt answers', async (t) => {
    for (const token of ['not-a-jwt', 'a.b.\u0000', '...', 'a.b', '\u00e9.\u00e9.\u00e9']) {
      expectProblem(t, await postJson(app, '/api/token/verify', { token }), 401, 'token_not_valid', `verify ${JSON.stringify(token)}`)
      expectProblem(t, await postJson(app, '/api/token/refresh', { refresh: token }), 401, 'token_not_valid', `refresh ${JSON.stringify(token)}`)
    }
  })

  t.test('every missing field is named', async (t) => {
    const res = await postJson(app, '/api/auth/register', {})
    expectProblem(t, res, 400, 'validation_failed', 'empty object')
    t.same(res.json().errors.map((e: { field: string }) => e.field).sort(), ['email', 'password', 'username'])
  })

  t.test('every failing field is named in one answer, the password policy included', async (t) => {
    const res = await postJson(app, '/api/auth/register', { username: '', email: 'x', password: 'short' })
    expectProblem(t, res, 400, 'validation_failed', 'three bad fields')
    t.same([...new Set(res.json().errors.map((e: { field: string }) => e.field))].sort(), ['email', 'password', 'username'])
    t.ok(res.json().errors.some((e: { field: string, message: string }) => e.field === 'password' && /too short/.test(e.message)), 'the policy\'s finding')
  })

  t.test('the list of failing fields is bounded, and says how many there were', async (t) => {
    const body = Object.fromEntries(Array.from({ length: 1300 }, (_, i) => [`k${i}`, 1]))
    const res = await postJson(app, '/api/auth/login', body)
    expectProblem(t, res, 400, 'validation_failed', '1,300 unknown keys')
    t.equal(res.json().errors.length, 20)
    t.match(res.json().detail, /^Invalid input: 130\d problems, the first 20 listed\.$/)
    t.ok(res.body.length < 4096, `a short answer: ${res.body.length} bytes`)
  })

  t.test('unknown properties are refused', async (t) => {
    const res = await postJson(app, '/api/auth/login', { identifier: 'a', password: 'b', is_admin: true })
    expectProblem(t, res, 400, 'validation_failed', 'unknown property')
    t.same(res.json().errors, [{ field: 'is_admin', message: 'is not allowed' }])
  })

  t.test('bodies that are not objects', async (t) => {
    for (const url of ENDPOINTS) {
      for (const body of ['[]', '"text"', '42', 'null', 'true']) {
        const res = await app.inject({ method: 'POST', url, payload: body, headers: { 'content-type': 'application/json' } })
        expectProblem(t, res, 400, 'validation_failed', `${url} ${body}`)
      }
    }
  })

  t.test('malformed and empty JSON', async (t) => {
    for (const url of ENDPOINTS) {
      for (const body of ['{', '{"a":', "{'a':1}", '']) {
        const res = await app.inject({ method: 'POST', url, payload: body, headers: { 'content-type': 'application/json' } })
        expectProblem(t, res, 400, 'invalid_json', `${url} ${JSON.stringify(body)}`)
      }
    }
  })

  t.test('__proto__ and constructor.prototype keys', async (t) => {
    const bodies = [
      '{"identifier":"a","password":"b","__proto__":{"isAdmin":true}}',
      '{"identifier":"a","password":"b","constructor":{"prototype":{"isAdmin":true}}}'
    ]
    for (const body of bodies) {
      const res = await app.inject({ method: 'POST', url: '/api/auth/login', payload: body, headers: { 'content-type': 'application/json' } })
      t.equal(res.statusCode, 400, body)
      t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
    }
  })

  t.test('deep nesting', async (t) => {
    const deep = '['.repeat(5000) + ']'.repeat(5000)
    const res = await app.inject({ method: 'POST', url: '/api/auth/login', payload: `{"identifier":${deep},"password":"x"}`, headers: { 'content-type': 'application/json' } })
    expectProblem(t, res, 400, 'validation_failed', 'deep nesting')
    const deepObject = '{"a":'.repeat(2500) + '1' + '}'.repeat(2500)
    const res2 = await app.inject({ method: 'POST', url: '/api/token/verify', payload: deepObject, headers: { 'content-type': 'application/json' } })
    expectProblem(t, res2, 400, 'validation_failed', 'deep object')
  })

  t.test('NUL bytes', async (t) => {
    const cases: Array<[string, unknown]> = [
      ['/api/auth/register', { ...uniqueUser(), username: 'nul\u0000byte' }],
      ['/api/auth/register', { ...uniqueUser(), email: 'nul\u0000@example.com' }],
      ['/api/auth/register', { ...uniqueUser(), password: 'correct horse\u0000battery' }],
      ['/api/auth/login', { identifier: 'nul\u0000byte', password: 'correct horse battery' }],
      ['/api/auth/login', { identifier: 'nul\u0000@example.com', password: 'correct horse battery' }],
      ['/api/token', { username: '\u0000', password: '\u0000' }]
    ]
    for (const [url, body] of cases) {
      expectProblem(t, await postJson(app, url, body), 400, 'validation_failed', `${url} ${JSON.stringify(body)}`)
    }
  })

  t.test('huge strings within the body limit are refused by their bounds', async (t) => {
    const big = 'a'.repeat(15_000)
    for (const [url, body] of [
      ['/api/auth/register', { username: big, email: 'a@example.com', password: 'correct horse battery' }],
      ['/api/auth/register', { ...uniqueUser(), email: `${big}@example.com` }],
      ['/api/auth/register', { ...uniqueUser(), password: big }],
      ['/api/auth/login', { identifier: big, password: 'x' }]
    ] as Array<[string, unknown]>) {
      expectProblem(t, await postJson(app, url, body), 400, 'validation_failed', `${url} big`)
    }
  })

  t.test('any string that is not a valid token is 401 token_not_valid, whatever its length up to the body limit', async (t) => {
    for (const token of ['x'.repeat(4097), `${'a'.repeat(8000)}.${'b'.repeat(8000)}.c`, 'e30.e30.' + 'A'.repeat(16_000)]) {
      expectProblem(t, await postJson(app, '/api/token/verify', { token }), 401, 'token_not_valid', `verify, ${token.length} characters`)
      expectProblem(t, await postJson(app, '/api/token/refresh', { refresh: token }), 401, 'token_not_valid', `refresh, ${token.length} characters`)
    }
  })

  t.test('a body over 16 KiB: 413', async (t) => {
    for (const url of ENDPOINTS) {
      const res = await postJson(app, url, { identifier: 'a'.repeat(17 * 1024), password: 'x' })
      expectProblem(t, res, 413, 'payload_too_large', url)
    }
  })

  t.test('a POST that is not JSON: 415, bodiless ones included', async (t) => {
    for (const url of ENDPOINTS) {
      for (const headers of [
        { 'content-type': 'application/x-www-form-urlencoded' },
        { 'content-type': 'text/plain' },
        { 'content-type': 'multipart/form-data; boundary=x' },
        {}
      ]) {
        const res = await app.inject({ method: 'POST', url, payload: headers['content-type'] === undefined ? undefined : 'identifier=a&password=b', headers })
        expectProblem(t, res, 415, 'unsupported_media_type', `${url} ${JSON.stringify(headers)}`)
      }
    }
  })

  t.test('JSON with a charset is JSON; other JSON-like types are not', async (t) => {
    const payload = '{"token":"a.b.c"}'
    const res = await app.inject({ method: 'POST', url: '/api/token/verify', payload, headers: { 'content-type': 'application/json; charset=utf-8' } })
    t.equal(res.statusCode, 401)
    const vendor = await app.inject({ method: 'POST', url: '/api/token/verify', payload, headers: { 'content-type': 'application/vnd.api+json' } })
    expectProblem(t, vendor, 415, 'unsupported_media_type', 'application/vnd.api+json')
  })

  t.test('lone UTF-16 surrogates are refused; surrogate pairs are fine', async (t) => {
    for (const [url, body] of [
      ['/api/auth/register', { ...uniqueUser(), password: 'correct horse \ud800 battery' }],
      ['/api/auth/login', { identifier: 'lone\udfffsurrogate', password: 'correct horse battery' }],
      ['/api/auth/login', { identifier: 'someone', password: 'abc\udbffdefghijk' }]
    ] as Array<[string, unknown]>) {
      expectProblem(t, await postJson(app, url, body), 400, 'validation_failed', `${url} ${JSON.stringify(body)}`)
    }
    const emoji = await postJson(app, '/api/auth/register', { ...uniqueUser(), password: '😀 correct horse 🐎' })
    t.equal(emoji.statusCode, 201)
  })

  t.test('HEAD and OPTIONS get answers, never a 500', async (t) => {
    t.equal((await app.inject({ method: 'HEAD', url: '/health/live' })).statusCode, 200)
    const options = await app.inject({ method: 'OPTIONS', url: '/api/auth/login' })
    t.equal(options.statusCode, 404)
    t.equal(options.json().code, 'not_found')
  })

  t.test('an unknown route: 404 in the same shape', async (t) => {
    const res = await app.inject({ url: '/api/nope' })
    t.equal(res.statusCode, 404)
    t.match(res.json(), { status: 404, code: 'not_found', title: 'Not Found' })
    t.equal((await app.inject({ method: 'DELETE', url: '/api/detail' })).statusCode, 404)
  })
})

t.test('a value PostgreSQL cannot take (SQLSTATE class 22) is the request\'s fault: 400, never 500', async (t) => {
  const { toProblem } = await import('../src/problems.ts')
  for (const code of ['22P02', '22007', '22003', '22001']) {
    const error = Object.assign(new Error('invalid input syntax for type uuid: "urn:uuid:…"'), { code, severity: 'ERROR' })
    t.same(toProblem(error as never), { status: 400, code: 'bad_request', detail: 'A value in the request is not valid.' }, code)
  }
  t.match(toProblem(Object.assign(new Error('x'), { code: '23505', severity: 'ERROR' }) as never), { status: 500 }, 'another SQLSTATE stays a server error')
})
