import { createSigner } from 'fast-jwt'
import t from 'tap'
import { parseConfig } from '../src/config.ts'
import { SecretBox } from '../src/lib/secret-box.ts'
import { loadSigningKeys } from '../src/services/keys/signing-keys.ts'
import { bearer, build, claimsOf, login, postJson, register, SECRET_KEY, TestClock, uniqueUser } from './helper.ts'

const CLIENT = { id: 'orders-service', secret: 'a-secret-of-sufficient-length' }
const basic = (id: string, secret: string) => ({ authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` })

t.test('for gateways and other services', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock, env: { INTROSPECTION_CLIENTS: `${CLIENT.id}:${CLIENT.secret}`, JWKS_MAX_AGE: '10m' } })

  t.test('the JWKS: its media type, a max-age from config, and an ETag that answers 304', async (t) => {
    const res = await app.inject({ url: '/.well-known/jwks.json' })
    t.equal(res.statusCode, 200)
    t.match(res.headers['content-type'], /^application\/jwk-set\+json(;|$)/)
    t.equal(res.headers['cache-control'], 'public, max-age=600')
    const etag = res.headers.etag as string
    t.match(etag, /^"[A-Za-z0-9_-]{27}"$/)
    for (const ifNoneMatch of [etag, `W/${etag}`, `"other", ${etag}`, '*']) {
      const cached = await app.inject({ url: '/.well-known/jwks.json', headers: { 'if-none-match': ifNoneMatch } })
      t.equal(cached.statusCode, 304, ifNoneMatch)
      t.equal(cached.body, '')
      t.equal(cached.headers.etag, etag)
    }
    t.equal((await app.inject({ url: '/.well-known/jwks.json', headers: { 'if-none-match': '"stale"' } })).statusCode, 200)
  })

  t.test('without PUBLIC_URL (development), the discovery document: the issuer, URLs from the request\'s host, never cached', async (t) => {
    const res = await app.inject({ url: '/.well-known/openid-configuration', headers: { host: 'auth.example.test:3000' } })
    t.equal(res.statusCode, 200)
    // A cache that kept this answer would hand every later client the host one request named.
    t.equal(res.headers['cache-control'], 'no-store')
    t.match(res.json(), {
      issuer: 'http://localhost:3000',
      jwks_uri: 'http://auth.example.test:3000/.well-known/jwks.json',
      introspection_endpoint: 'http://auth.example.test:3000/api/token/introspect',
      id_token_signing_alg_values_supported: ['ES256']
    })
  })

  t.test('check: 204 with the identity headers and nothing else for a valid token', async (t) => {
    const { access, user } = await login(app)
    const res = await app.inject({ url: '/api/auth/check', headers: bearer(access) })
    t.equal(res.statusCode, 204)
    t.equal(res.body, '')
    t.match(res.headers, {
      'x-auth-user-id': String(user.id),
      'x-auth-username': user.username,
      'x-auth-email': user.email,
      'x-auth-session-id': claimsOf(access).sid,
      'cache-control': 'no-store'
    })
    t.equal(res.headers['set-cookie'], undefined, 'no cookie writes')
    const byCookie = await app.inject({ url: '/api/auth/check/', headers: { cookie: `__Host-access_token=${access}` } })
    t.equal(byCookie.statusCode, 204, 'the access cookie works too')
  })

  t.test('check: every identity value is percent-encoded alike, so decoding it downstream gives it back exactly', async (t) => {
    const user = await register(app, { ...uniqueUser(), username: `émile${process.pid}` })
    const { access } = await login(app, user)
    const res = await app.inject({ url: '/api/auth/check', headers: bearer(access) })
    t.equal(res.headers['x-auth-username'], encodeURIComponent(user.username))
    // An address that itself spells an escape: it must not decode to alice@example.com.
    const tricky = await register(app, { ...uniqueUser(), email: `%61lice${process.pid}@example.com` })
    const trickyCheck = await app.inject({ url: '/api/auth/check', headers: bearer((await login(app, tricky)).access) })
    t.equal(trickyCheck.headers['x-auth-email'], `%2561lice${process.pid}@example.com`)
    t.equal(decodeURIComponent(String(trickyCheck.headers['x-auth-email'])), tricky.email)
    t.equal(decodeURIComponent(String(res.headers['x-auth-email'])), user.email, 'plain ASCII decodes to itself')
  })

  t.test('check: 401 with a challenge without a token, with a refresh token, after logout, for a revoked session', async (t) => {
    const none = await app.inject({ url: '/api/auth/check' })
    t.equal(none.statusCode, 401)
    t.equal(none.headers['www-authenticate'], 'Bearer realm="authgate"')
    const { access, refresh } = await login(app)
    t.equal((await app.inject({ url: '/api/auth/check', headers: bearer(refresh) })).statusCode, 401)
    t.equal((await postJson(app, '/api/auth/logout', {}, bearer(access))).statusCode, 204)
    const after = await app.inject({ url: '/api/auth/check', headers: bearer(access) })
    t.equal(after.statusCode, 401, 'at once after logout')
    t.match(after.headers['www-authenticate'], /error="invalid_token"/)
  })

  t.test('introspection answers services with HTTP Basic credentials only', async (t) => {
    const { access } = await login(app)
    const form = (headers: Record<string, string>, payload = `token=${access}`) =>
      app.inject({ method: 'POST', url: '/api/token/introspect', payload, headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers } })
    for (const [why, headers, description] of [
      ['no credentials', {}, /no client credentials/],
      // The same words for both: nobody learns whether a client id exists without its secret.
      ['a wrong secret', basic(CLIENT.id, 'not-the-secret-at-all'), /^Client authentication failed: unknown client, or a wrong or expired secret\.$/],
      ['an unknown client', basic('stranger', CLIENT.secret), /^Client authentication failed: unknown client, or a wrong or expired secret\.$/],
      ['a Bearer token', bearer(access), /not HTTP Basic/]
    ] as Array<[string, Record<string, string>, RegExp]>) {
      const res = await form(headers)
      t.equal(res.statusCode, 401, why)
      // RFC 7662 §2.3 and RFC 6749 §5.2: what OAuth clients read, saying why (issue 26).
      t.same(Object.keys(res.json()).sort(), ['error', 'error_description'], why)
      t.match(res.json(), { error: 'invalid_client', error_description: description }, why)
      t.match(res.headers['content-type'], /^application\/json/)
      t.equal(res.headers['www-authenticate'], 'Basic realm="authgate"', why)
    }
    const bad = await app.inject({ method: 'POST', url: '/api/token/introspect', payload: 'nothing=1', headers: { 'content-type': 'application/x-www-form-urlencoded', ...basic(CLIENT.id, CLIENT.secret) } })
    t.equal(bad.statusCode, 400)
    t.match(bad.json(), { error: 'invalid_request', error_description: /token/ }, 'bad input too, in the OAuth shape')
  })

  t.test('introspection: active with the claims and username for a live token, revocation-aware', async (t) => {
    const { access, refresh, user } = await login(app)
    const introspect = async (token: string, type: 'form' | 'json' = 'form') => {
      const res = type === 'form'
        ? await app.inject({ method: 'POST', url: '/api/token/introspect', payload: `token=${encodeURIComponent(token)}&token_type_hint=access_token`, headers: { 'content-type': 'application/x-www-form-urlencoded', ...basic(CLIENT.id, CLIENT.secret) } })
        : await postJson(app, '/api/token/introspect', { token }, basic(CLIENT.id, CLIENT.secret))
      t.equal(res.statusCode, 200)
      t.equal(res.headers['cache-control'], 'no-store')
      return res.json()
    }
    const claims = claimsOf(access)
    t.same(await introspect(access), {
      active: true,
      sub: String(user.id),
      client_id: 'authgate',
      user_id: user.id,
      username: user.username,
      roles: [],
      exp: claims.exp,
      iat: claims.iat,
      iss: app.config.JWT_ISSUER,
      aud: 'authgate',
      jti: claims.jti,
      // RFC 7662 §2.2: the OAuth token type.
      token_type: 'Bearer',
      sid: claims.sid,
      aal: 'aal1',
      amr: ['pwd'],
      auth_time: claims.auth_time
    })
    // A resource server asks whether a Bearer token may pass: a refresh token may not.
    t.same(await introspect(refresh, 'json'), { active: false }, 'a live refresh token is not active for a resource server')
    t.same(await introspect('not-a-token'), { active: false })
    // Whatever makes a token fail verification: inactive, never an error.
    const [key] = await loadSigningKeys(app.db, new SecretBox(SECRET_KEY, 'signing-keys'), 0)
    const signed = (header: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
      createSigner({ key: key!.privateKey, algorithm: 'ES256', kid: key!.kid, header: { alg: 'ES256', typ: 'at+jwt', ...header } })({ ...claims, ...extra })
    t.same(await introspect(signed({}, { nbf: claims.exp })), { active: false }, 'nbf ahead')
    t.same(await introspect(signed({ crit: ['x-unknown'], 'x-unknown': 1 })), { active: false }, 'an unknown crit header')
    t.same(await introspect(`${access.slice(0, -4)}AAAA`), { active: false }, 'a malformed signature')
    t.same(await introspect(`${access.split('.').slice(0, 2).join('.')}.`), { active: false }, 'no signature')
    t.same(await introspect(signed({})), { ...await introspect(access), jti: claims.jti }, 'the same claims signed again: active')
    const rotated = (await postJson(app, '/api/token/refresh', { refresh })).json()
    t.same(await introspect(refresh), { active: false }, 'a used refresh token')
    clock.advance(301)
    t.same(await introspect(rotated.access), { active: false }, 'an expired token')
    clock.advance(-301)
    await postJson(app, '/api/auth/logout', {}, bearer(rotated.access))
    t.same(await introspect(rotated.refresh), { active: false }, 'a token of an ended session')
  })

  t.test('a form body anywhere else is still refused', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/api/token/verify', payload: 'token=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } })
    t.equal(res.statusCode, 415)
  })
})

t.test('with PUBLIC_URL the discovery document names it whatever the request says, cacheable; with HS256 it offers no algorithm', async (t) => {
  const app = await build(t, { env: { PUBLIC_URL: 'https://auth.example.com/', JWT_ALGORITHM: 'HS256', TRUST_PROXY: '127.0.0.1' } })
  // The poisoning attempt: a forwarded host of the attacker's, through a trusted proxy.
  const res = await app.inject({ url: '/.well-known/openid-configuration', headers: { host: 'attacker.example', 'x-forwarded-host': 'attacker.example' } })
  const doc = res.json()
  t.equal(doc.issuer, 'https://auth.example.com', 'the issuer is the public URL (OIDC Discovery §4.3)')
  t.equal(doc.jwks_uri, 'https://auth.example.com/.well-known/jwks.json')
  t.equal(doc.token_endpoint, 'https://auth.example.com/oauth/token', 'the OAuth token endpoint, which takes forms')
  t.equal(res.headers['cache-control'], 'public, max-age=300')
  t.notMatch(res.body, /attacker/)
  t.same(doc.id_token_signing_alg_values_supported, [])
  t.same((await app.inject({ url: '/.well-known/jwks.json' })).json(), { keys: [] }, 'no key published')
})

t.test('INTROSPECTION_CLIENTS is id:secret pairs, each secret long enough', async (t) => {
  t.same([...parseConfig({ INTROSPECTION_CLIENTS: 'a:0123456789abcdef, b:fedcba9876543210:with-colon' }).introspectionClients],
    [['a', '0123456789abcdef'], ['b', 'fedcba9876543210:with-colon']])
  t.equal(parseConfig({}).introspectionClients.size, 0)
  for (const value of ['nocolon', 'a:short', ':0123456789abcdef', 'a:0123456789abcdef,a:0123456789abcdef']) {
    t.throws(() => parseConfig({ INTROSPECTION_CLIENTS: value }), /INTROSPECTION_CLIENTS must be id:secret pairs/, value)
  }
})

t.test('behind a trusted proxy the discovery document uses the forwarded host and protocol; from anyone else, not', async (t) => {
  const forwarded = { host: 'authgate:3000', 'x-forwarded-host': 'auth.example.com', 'x-forwarded-proto': 'https' }
  const trusted = await build(t, { env: { TRUST_PROXY: '127.0.0.1' } })
  t.equal((await trusted.inject({ url: '/.well-known/openid-configuration', headers: forwarded })).json().jwks_uri, 'https://auth.example.com/.well-known/jwks.json')
  const direct = await build(t)
  t.equal((await direct.inject({ url: '/.well-known/openid-configuration', headers: forwarded })).json().jwks_uri, 'http://authgate:3000/.well-known/jwks.json')
})
