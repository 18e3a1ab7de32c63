import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { runCli } from '../src/cli.ts'
import { silentLogger } from '../src/lib/logger.ts'
import { createCleanup } from '../src/services/cleanup.ts'
import { build, claimsOf, freshDatabase, login, postJson, SECRET_KEY, TestClock } from './helper.ts'

// Service identities (issue 16): OAuth 2.0 client credentials at /oauth/token, the tokens
// (RFC 9068) and their checks at introspection, forward-auth and verify; the refresh grant and
// revocation for users; the clients CLI. Both engines.

const ORDERS = 'https://orders.example.test'
const BILLING = 'https://billing.example.test'
const INTROSPECTOR = { id: 'gateway', secret: 'introspection-secret-0123456789' }

const basic = (id: string, secret: string): string => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`
const form = (fields: Record<string, string | string[]>): string => {
  const params = new URLSearchParams()
  for (const [name, value] of Object.entries(fields)) for (const one of [value].flat()) params.append(name, one)
  return params.toString()
}
const postForm = (app: FastifyInstance, url: string, fields: Record<string, string | string[]>, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url, payload: form(fields), headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers } })
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

async function client (app: FastifyInstance, input: { scopes?: string[], audiences?: string[], tokenTtlS?: number } = {}) {
  const { client, secret } = await app.clients.create({ name: 'orders-reader', scopes: input.scopes ?? ['orders:read', 'orders:write'], audiences: input.audiences ?? [ORDERS], tokenTtlS: input.tokenTtlS })
  return { id: client.id, secret, authorization: basic(client.id, secret) }
}

async function tokenFor (app: FastifyInstance, authorization: string, fields: Record<string, string | string[]> = {}): Promise<string> {
  const res = await postForm(app, '/oauth/token', { grant_type: 'client_credentials', ...fields }, { authorization })
  if (res.statusCode !== 200) throw new Error(`token: ${res.statusCode} ${res.body}`)
  return res.json().access_token
}

t.test('client credentials', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock, env: { INTROSPECTION_CLIENTS: `${INTROSPECTOR.id}:${INTROSPECTOR.secret}` } })
  const orders = await client(app)
  const rows = async () => Object.fromEntries(await Promise.all(['sessions', 'refresh_tokens', 'oauth_client_assertions', 'oauth_client_secrets'].map(async (table) =>
    [table, Number((await app.db.selectFrom(table as 'sessions').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n)])))

  t.test('client_secret_basic, a form: an RFC 9068 token for the one audience, every scope by default, nothing written', async (t) => {
    const before = await rows()
    await app.audit.flush()
    const events = Number((await app.db.selectFrom('audit_events').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n)
    const res = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: orders.authorization })
    t.equal(res.statusCode, 200, res.body)
    t.equal(res.headers['cache-control'], 'no-store')
    t.equal(res.headers.pragma, 'no-cache')
    t.match(res.headers['content-type'], /^application\/json/)
    const body = res.json()
    t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'scope', 'token_type'], 'no refresh token')
    t.match(body, { token_type: 'Bearer', expires_in: 600, scope: 'orders:read orders:write' })
    const header = JSON.parse(Buffer.from(body.access_token.split('.')[0], 'base64url').toString())
    t.equal(header.typ, 'at+jwt')
    const claims = claimsOf(body.access_token)
    t.match(claims, { iss: app.config.JWT_ISSUER, sub: orders.id, aud: ORDERS, client_id: orders.id, scope: 'orders:read orders:write', gty: 'client_credentials', token_type: 'access' })
    t.equal(typeof claims.aud, 'string', 'exactly one audience')
    t.equal((claims.exp as number) - (claims.iat as number), 600)
    t.match(claims.jti, /^[0-9a-f-]{36}$/)
    t.notOk('user_id' in claims || 'sid' in claims, 'nothing of a user')
    t.same(await rows(), before, 'no row per token')
    await app.audit.flush()
    t.equal(Number((await app.db.selectFrom('audit_events').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n), events, 'no audit row per token either')
  })

  t.test('client_secret_post and JSON bodies; a subset of the scopes; resource or audience naming the audience', async (t) => {
    const posted = await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: orders.id, client_secret: orders.secret, scope: 'orders:read' })
    t.equal(posted.statusCode, 200, posted.body)
    t.equal(posted.json().scope, 'orders:read')
    const json = await postJson(app, '/oauth/token', { grant_type: 'client_credentials', scope: 'orders:write', resource: ORDERS }, { authorization: orders.authorization })
    t.equal(json.statusCode, 200, json.body)
    t.match(claimsOf(json.json().access_token), { scope: 'orders:write', aud: ORDERS })
    const both = await client(app, { audiences: [ORDERS, BILLING] })
    t.equal(claimsOf(await tokenFor(app, both.authorization, { audience: BILLING })).aud, BILLING)
    t.equal(claimsOf(await tokenFor(app, both.authorization, { resource: ORDERS })).aud, ORDERS)
    t.equal(claimsOf(await tokenFor(app, both.authorization, { resource: [ORDERS, ORDERS] })).aud, ORDERS, 'one resource named twice is one')
    t.equal(claimsOf(await tokenFor(app, orders.authorization, { scope: ' orders:read  orders:read ' })).scope, 'orders:read', 'spaces and repeats are one scope')
  })

  t.test('errors in RFC 6749 §5.2\'s shape, invalid_client a 401 with a Basic challenge', async (t) => {
    const disabled = await client(app)
    await app.clients.disable(disabled.id)
    const both = await client(app, { audiences: [ORDERS, BILLING] })
    const cases: Array<[string, Promise<Awaited<ReturnType<typeof postForm>>>, number, string]> = [
      ['a wrong secret', postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(orders.id, 'wrong') }), 401, 'invalid_client'],
      ['an unknown client', postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic('0'.repeat(32), orders.secret) }), 401, 'invalid_client'],
      ['a disabled client', postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: disabled.authorization }), 401, 'invalid_client'],
      ['no client at all', postForm(app, '/oauth/token', { grant_type: 'client_credentials' }), 401, 'invalid_client'],
      ['a bare client_id', postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: orders.id }), 401, 'invalid_client'],
      ['a Bearer header', postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: 'Bearer abc' }), 401, 'invalid_client'],
      ['two methods at once', postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_secret: orders.secret }, { authorization: orders.authorization }), 400, 'invalid_request'],
      ['another client_id beside Basic', postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: both.id }, { authorization: orders.authorization }), 400, 'invalid_request'],
      ['a secret without its id', postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_secret: orders.secret }), 400, 'invalid_request'],
      ['no grant_type', postForm(app, '/oauth/token', {}, { authorization: orders.authorization }), 400, 'invalid_request'],
      ['grant_type twice', postForm(app, '/oauth/token', { grant_type: ['client_credentials', 'client_credentials'] }, { authorization: orders.authorization }), 400, 'invalid_request'],
      ['the password grant', postForm(app, '/oauth/token', { grant_type: 'password', username: 'a', password: 'b' }, { authorization: orders.authorization }), 400, 'unsupported_grant_type'],
      ['a scope it does not hold', postForm(app, '/oauth/token', { grant_type: 'client_credentials', scope: 'orders:read admin' }, { authorization: orders.authorization }), 400, 'invalid_scope'],
      ['an audience it may not have', postForm(app, '/oauth/token', { grant_type: 'client_credentials', resource: BILLING }, { authorization: orders.authorization }), 400, 'invalid_target'],
      ['two audiences', postForm(app, '/oauth/token', { grant_type: 'client_credentials', resource: [ORDERS, BILLING] }, { authorization: both.authorization }), 400, 'invalid_target'],
      ['resource and audience apart', postForm(app, '/oauth/token', { grant_type: 'client_credentials', resource: ORDERS, audience: BILLING }, { authorization: both.authorization }), 400, 'invalid_target'],
      ['no audience named by a client of several', postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: both.authorization }), 400, 'invalid_target'],
      ['an introspection-only client', postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(INTROSPECTOR.id, INTROSPECTOR.secret) }), 400, 'unauthorized_client'],
      ['a text body', app.inject({ method: 'POST', url: '/oauth/token', payload: 'grant_type=client_credentials', headers: { 'content-type': 'text/plain', authorization: orders.authorization } }), 415, 'invalid_request']
    ]
    for (const [name, pending, status, error] of cases) {
      const res = await pending
      t.equal(res.statusCode, status, `${name}: ${res.body}`)
      t.match(res.json(), { error, error_description: String }, name)
      t.match(res.headers['content-type'], /^application\/json/, name)
      if (status === 401) t.equal(res.headers['www-authenticate'], 'Basic realm="authgate"', name)
      if (status === 415) t.match(res.json().error_description, /x-www-form-urlencoded or application\/json/, name)
    }
  })

  t.test('unknown parameters are ignored (RFC 6749 §3.2)', async (t) => {
    const res = await postForm(app, '/oauth/token', { grant_type: 'client_credentials', foo: 'bar' }, { authorization: orders.authorization })
    t.equal(res.statusCode, 200, res.body)
  })

  t.test('a service token at introspection, forward-auth and verify; the user routes refuse it', async (t) => {
    const access = await tokenFor(app, orders.authorization, { scope: 'orders:read' })
    const introspected = await postForm(app, '/api/token/introspect', { token: access }, { authorization: basic(INTROSPECTOR.id, INTROSPECTOR.secret) })
    t.equal(introspected.statusCode, 200)
    t.match(introspected.json(), { active: true, sub: orders.id, client_id: orders.id, scope: 'orders:read', aud: ORDERS, token_type: 'access' })
    t.notOk('user_id' in introspected.json())

    const check = await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(ORDERS)}&scope=orders:read`, headers: bearer(access) })
    t.equal(check.statusCode, 204, check.body)
    t.equal(check.headers['x-auth-client-id'], orders.id)
    t.equal(check.headers['x-auth-scope'], 'orders:read')
    t.equal(check.headers['x-auth-user-id'], undefined)

    const noAudience = await app.inject({ url: '/api/auth/check', headers: bearer(access) })
    t.equal(noAudience.statusCode, 401, 'a gateway that names no audience does not let a service token through')
    t.match(noAudience.json(), { code: 'token_not_valid', detail: /audience/ })
    const otherAudience = await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(BILLING)}`, headers: bearer(access) })
    t.equal(otherAudience.statusCode, 401, 'a token for orders is not taken for billing')
    t.match(otherAudience.headers['www-authenticate'], /error="invalid_token"/)
    const scope = await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(ORDERS)}&scope=orders:write`, headers: bearer(access) })
    t.equal(scope.statusCode, 403)
    t.match(scope.json(), { code: 'insufficient_scope', detail: /orders:write/ })
    t.match(scope.headers['www-authenticate'], /^Bearer realm="authgate", error="insufficient_scope"/)

    t.equal((await postJson(app, '/api/token/verify', { token: access })).statusCode, 200)
    for (const url of ['/api/detail', '/api/auth/sessions']) {
      t.equal((await app.inject({ url, headers: bearer(access) })).statusCode, 401, `${url} is for users`)
    }
    t.equal((await postJson(app, '/api/auth/logout', {}, bearer(access))).statusCode, 401)

    await app.clients.disable(orders.id)
    t.same((await postForm(app, '/api/token/introspect', { token: access }, { authorization: basic(INTROSPECTOR.id, INTROSPECTOR.secret) })).json(), { active: false }, 'disabled: inactive')
    t.equal((await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(ORDERS)}`, headers: bearer(access) })).statusCode, 401, 'disabled: refused')
    t.equal((await postJson(app, '/api/token/verify', { token: access })).statusCode, 401, 'disabled: not valid')
    await app.clients.enable(orders.id)
    t.equal((await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(ORDERS)}`, headers: bearer(access) })).statusCode, 204, 'enabled again')
  })

  t.test('introspection by a client of the database that holds the introspect scope; one without it gets 403', async (t) => {
    const introspector = await client(app, { scopes: ['introspect'] })
    const { access } = await login(app)
    const res = await postForm(app, '/api/token/introspect', { token: access }, { authorization: introspector.authorization })
    t.equal(res.statusCode, 200, res.body)
    t.match(res.json(), { active: true, client_id: app.config.OAUTH_FIRST_PARTY_CLIENT_ID, sid: String })
    const posted = await postForm(app, '/api/token/introspect', { token: access, client_id: introspector.id, client_secret: introspector.secret })
    t.equal(posted.statusCode, 200, 'client_secret_post')
    const refused = await postForm(app, '/api/token/introspect', { token: access }, { authorization: orders.authorization })
    t.equal(refused.statusCode, 403)
    t.match(refused.json(), { error: 'insufficient_scope' })
    t.equal((await postForm(app, '/api/token/introspect', { token: access }, { authorization: basic(introspector.id, 'wrong') })).statusCode, 401)
  })

  t.test('users\' tokens: client_id of the first-party client, and an audience other than JWT_AUDIENCE is refused everywhere', async (t) => {
    const { access, user } = await login(app)
    t.equal(claimsOf(access).client_id, 'authgate')
    // Signed with the service's own key: only the audience is wrong.
    const claims = claimsOf(access)
    const stranger = app.keyring.signService({ ...claims, aud: ORDERS } as never)
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(stranger) })).statusCode, 401)
    t.equal((await app.inject({ url: '/api/auth/check', headers: bearer(stranger) })).statusCode, 401)
    t.equal((await postJson(app, '/api/token/verify', { token: stranger })).statusCode, 401)
    t.same((await postForm(app, '/api/token/introspect', { token: stranger }, { authorization: basic(INTROSPECTOR.id, INTROSPECTOR.secret) })).json(), { active: false })
    // A user's token at forward-auth: an audience named must be its own; users hold no scopes.
    t.equal((await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(app.config.JWT_AUDIENCE)}`, headers: bearer(access) })).headers['x-auth-user-id'], String(user.id))
    t.equal((await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(ORDERS)}`, headers: bearer(access) })).statusCode, 401)
    t.equal((await app.inject({ url: '/api/auth/check?scope=orders:read', headers: bearer(access) })).statusCode, 403)
  })

  t.test('secret rotation: both secrets work during the grace, the old one not after it; a grace of 0 ends it at once', async (t) => {
    const rotating = await client(app)
    const { secret: second, previousExpiresAt } = await app.clients.rotateSecret(rotating.id, 3600)
    t.ok(previousExpiresAt)
    t.ok(await tokenFor(app, rotating.authorization), 'the old secret, in its grace')
    t.ok(await tokenFor(app, basic(rotating.id, second)), 'the new one')
    // The test clock's token time stands still while the database's runs on: past the grace by
    // more than this test file takes.
    clock.advance(3600 + 300)
    t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: rotating.authorization })).statusCode, 401, 'the old one, past its grace')
    t.ok(await tokenFor(app, basic(rotating.id, second)))
    const { secret: third } = await app.clients.rotateSecret(rotating.id, 600)
    const { secret: fourth } = await app.clients.rotateSecret(rotating.id, 0)
    t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(rotating.id, second) })).statusCode, 401, 'never more than two: the one in its grace went at the next rotation')
    t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(rotating.id, third) })).statusCode, 401, 'grace 0')
    t.ok(await tokenFor(app, basic(rotating.id, fourth)))
    t.equal((await app.clients.show(rotating.id)).secrets.length, 1)
  })

  t.test('private_key_jwt (RFC 7523) signed with jose: accepted once, for the token endpoint', async (t) => {
    const { publicKey, privateKey } = await generateKeyPair('ES256')
    const jwk = { ...await exportJWK(publicKey), kid: 'k1', alg: 'ES256' }
    const { client: signer } = await app.clients.create({ name: 'signer', scopes: ['orders:read'], audiences: [ORDERS], jwks: { keys: [jwk] } })
    const now = Math.floor(clock.now().getTime() / 1000)
    const assertion = (claims: Record<string, unknown> = {}, key = privateKey) => new SignJWT({
      jti: randomUUID(), iss: signer.id, sub: signer.id, aud: `${app.config.JWT_ISSUER}/oauth/token`, iat: now, exp: now + 60, ...claims
    }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).sign(key)
    const grant = (clientAssertion: string) => postForm(app, '/oauth/token', {
      grant_type: 'client_credentials',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: clientAssertion
    })
    const first = await assertion()
    const res = await grant(first)
    t.equal(res.statusCode, 200, res.body)
    t.equal(claimsOf(res.json().access_token).client_id, signer.id)
    t.equal((await grant(first)).statusCode, 401, 'a replayed assertion is refused')
    t.equal((await grant(await assertion({ aud: app.config.JWT_ISSUER }))).statusCode, 200, 'the issuer as audience (RFC 7523bis)')
    t.equal((await grant(await assertion({ aud: 'https://elsewhere.example/oauth/token' }))).statusCode, 401, 'another server\'s assertion')
    t.equal((await grant(await assertion({ exp: now + 3600 }))).statusCode, 401, 'an assertion that lives an hour')
    t.equal((await grant(await assertion({ exp: now - 120 }))).statusCode, 401, 'an expired one')
    t.equal((await grant(await assertion({ iat: now + 10, nbf: now + 10 }))).statusCode, 200, 'from a client whose clock runs 10 s ahead')
    t.equal((await grant(await assertion({ nbf: now + 120, exp: now + 180 }))).statusCode, 401, 'one that is good only in two minutes')
    const other = await generateKeyPair('ES256')
    t.equal((await grant(await assertion({}, other.privateKey))).statusCode, 401, 'signed by another key')
    t.equal((await grant('not.a.jwt')).statusCode, 401)
    const secretOnly = await client(app)
    const forged = await new SignJWT({ jti: randomUUID() }).setProtectedHeader({ alg: 'ES256' }).setIssuer(secretOnly.id).setSubject(secretOnly.id)
      .setAudience(`${app.config.JWT_ISSUER}/oauth/token`).setExpirationTime(now + 60).sign(privateKey)
    t.equal((await grant(forged)).statusCode, 401, 'a client with no JWKS')
    t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_assertion: await assertion(), client_assertion_type: 'jwt' })).statusCode, 400, 'another assertion type')
    t.equal(Number((await app.db.selectFrom('oauth_client_assertions').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n), 3, 'one row per assertion accepted, kept until it expires')
    clock.advance(3600)
    t.match(await createCleanup({ db: app.db, config: app.config, clock, audit: app.audit, log: silentLogger }).flush(), { assertions: 3 }, 'then pruned')
  })

  t.test('a client\'s definition is checked', async (t) => {
    await t.rejects(app.clients.create({ name: 'x', scopes: ['has space'], audiences: [ORDERS] }), { errors: [{ field: 'scope' }] })
    await t.rejects(app.clients.create({ name: 'x', scopes: [], audiences: [] }), { errors: [{ field: 'audience' }] })
    await t.rejects(app.clients.create({ name: 'x', scopes: [], audiences: ['orders'] }), { errors: [{ field: 'audience' }] }, 'not an absolute URI')
    await t.rejects(app.clients.create({ name: 'x', scopes: [], audiences: [app.config.JWT_AUDIENCE] }), { errors: [{ field: 'audience' }] }, 'the users\' audience')
    await t.rejects(app.clients.create({ name: 'x', scopes: [], audiences: [ORDERS], tokenTtlS: 0 }), { errors: [{ field: 'ttl' }] }, 'never unlimited')
    await t.rejects(app.clients.create({ name: 'x', scopes: [], audiences: [ORDERS], tokenTtlS: 86_401 }), { errors: [{ field: 'ttl' }] })
    const { privateKey } = await generateKeyPair('ES256', { extractable: true })
    await t.rejects(app.clients.create({ name: 'x', scopes: [], audiences: [ORDERS], jwks: { keys: [await exportJWK(privateKey)] } }), { errors: [{ field: 'jwks' }] }, 'a private key')
  })
})

t.test('the refresh grant and revocation, for users of the first-party client', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const orders = await client(app)

  t.test('grant_type=refresh_token: a rotated pair in RFC 6749 §5.1\'s shape; a spent token is invalid_grant', async (t) => {
    const { refresh } = await login(app)
    const res = await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: refresh })
    t.equal(res.statusCode, 200, res.body)
    t.match(res.json(), { token_type: 'Bearer', access_token: String, refresh_token: String, expires_in: app.config.accessTtlS })
    t.equal(res.headers['set-cookie'], undefined, 'no cookies: an OAuth client reads the body')
    t.equal((await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: res.json().refresh_token, client_id: 'authgate' })).statusCode, 200, 'the first-party client_id may be named')
    // The first token, spent, past the reuse grace: reuse detection ends the session.
    clock.advance(app.config.AUTH_REUSE_GRACE_S + 1)
    const reused = await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: refresh })
    t.equal(reused.statusCode, 400)
    t.match(reused.json(), { error: 'invalid_grant' })
    t.match((await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: 'junk' })).json(), { error: 'invalid_grant' })
    t.match((await postForm(app, '/oauth/token', { grant_type: 'refresh_token' })).json(), { error: 'invalid_request' })
  })

  t.test('a user\'s refresh token is not a service\'s, nor another public client\'s, and carries no scope', async (t) => {
    const { refresh } = await login(app)
    t.match((await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: refresh }, { authorization: orders.authorization })).json(), { error: 'invalid_grant' })
    t.match((await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: refresh, client_id: 'someone-else' })).json(), { error: 'invalid_client' })
    t.match((await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: refresh, scope: 'orders:read' })).json(), { error: 'invalid_scope' })
    t.equal((await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: refresh })).statusCode, 200, 'none of those spent it')
  })

  t.test('POST /oauth/revoke (RFC 7009): a refresh or access token ends its session; anything else is 200 too', async (t) => {
    const first = await login(app)
    const res = await postForm(app, '/oauth/revoke', { token: first.refresh, token_type_hint: 'refresh_token' })
    t.equal(res.statusCode, 200, res.body)
    t.equal(res.body, '', 'no content')
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(first.access) })).statusCode, 401, 'the session ended')
    t.match((await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: first.refresh })).json(), { error: 'invalid_grant' })
    t.equal((await postForm(app, '/oauth/revoke', { token: first.refresh })).statusCode, 200, 'again: no error')

    const second = await login(app)
    t.equal((await postForm(app, '/oauth/revoke', { token: second.access })).statusCode, 200)
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(second.access) })).statusCode, 401)
    t.equal((await postForm(app, '/oauth/revoke', { token: 'not-a-token' })).statusCode, 200)
    t.match((await postForm(app, '/oauth/revoke', {})).json(), { error: 'invalid_request' })

    const third = await login(app)
    const byService = await postForm(app, '/oauth/revoke', { token: third.refresh }, { authorization: orders.authorization })
    t.equal(byService.statusCode, 400)
    t.match(byService.json(), { error: 'unauthorized_client' })
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(third.access) })).statusCode, 200, 'a service revokes no user\'s session')
    t.equal((await postForm(app, '/oauth/revoke', { token: third.refresh }, { authorization: basic(orders.id, 'wrong') })).statusCode, 401)
  })

  t.test('a service token cannot be revoked (one signature): unsupported_token_type to its client', async (t) => {
    const access = await tokenFor(app, orders.authorization)
    t.match((await postForm(app, '/oauth/revoke', { token: access }, { authorization: orders.authorization })).json(), { error: 'unsupported_token_type', error_description: /disable/ })
    t.match((await postForm(app, '/oauth/revoke', { token: access })).json(), { error: 'unauthorized_client' })
  })
})

t.test('the metadata lists exactly what works', async (t) => {
  const app = await build(t, { env: { PUBLIC_URL: 'https://auth.example.test' } })
  const res = await app.inject({ url: '/.well-known/oauth-authorization-server' })
  t.equal(res.statusCode, 200)
  const metadata = res.json()
  t.match(metadata, {
    issuer: 'https://auth.example.test',
    token_endpoint: 'https://auth.example.test/oauth/token',
    revocation_endpoint: 'https://auth.example.test/oauth/revoke',
    introspection_endpoint: 'https://auth.example.test/api/token/introspect',
    jwks_uri: 'https://auth.example.test/.well-known/jwks.json',
    grant_types_supported: ['client_credentials', 'refresh_token'],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none'],
    scopes_supported: ['introspect']
  })
  t.notOk('authorization_endpoint' in metadata)
  const oidc = (await app.inject({ url: '/.well-known/openid-configuration' })).json()
  t.same(Object.fromEntries(Object.keys(metadata).map((key) => [key, oidc[key]])), metadata, 'the OpenID document says the same')
  t.match(oidc, { id_token_signing_alg_values_supported: ['ES256'], subject_types_supported: ['public'] })
})

t.test('npm run clients: create, list, show, rotate-secret, disable, enable, each audited', async (t) => {
  const env = { ...await freshDatabase(t), SECRET_KEY }
  t.equal((await runCli(['migrate'], env)).code, 0)
  const created = await runCli(['clients', 'create', '--name', 'orders', '--scope', 'orders:read', '--scope', 'orders:write', '--audience', ORDERS, '--ttl', '5m', '--json'], env)
  t.equal(created.code, 0, created.stderr)
  const { client_id: id, client_secret: secret, ...rest } = JSON.parse(created.stdout)
  t.same(rest, {}, '--json prints exactly {"client_id","client_secret"}')
  t.match(id, /^[0-9a-f]{32}$/)
  t.equal(Buffer.from(secret, 'base64url').length, 32, '256 random bits')

  const list = await runCli(['clients', 'list'], env)
  t.match(list.stdout, new RegExp(`${id}  "orders"\\n  scopes: orders:read orders:write\\n  audiences: ${ORDERS}\\n  token lifetime: 300 s`))
  t.notMatch(list.stdout, secret, 'a secret is shown once, at its making')
  const rotated = await runCli(['clients', 'rotate-secret', id, '--grace', '1h', '--json'], env)
  t.equal(rotated.code, 0, rotated.stderr)
  t.not(JSON.parse(rotated.stdout).client_secret, secret)
  const shown = JSON.parse((await runCli(['clients', 'show', id, '--json'], env)).stdout)
  t.equal(shown.secrets.length, 2, 'the old secret in its grace, and the new one')
  t.match(await runCli(['clients', 'disable', id], env), { code: 0, stdout: `disabled ${id} "orders"` })
  t.match(await runCli(['clients', 'list', '--json'], env), { stdout: /"disabled": true/ })
  t.match(await runCli(['clients', 'enable', id], env), { code: 0, stdout: `enabled ${id} "orders"` })

  t.match(await runCli(['clients', 'show', '0'.repeat(32)], env), { code: 1, stderr: /No client 0{32}/ })
  t.match(await runCli(['clients', 'create', '--name', 'x', '--audience', 'orders', '--scope', 'a"b'], env), { code: 1, stderr: /Invalid input\.\n {2}--scope: "a\\"b" is not a scope.*\n {2}--audience: "orders" is not an absolute URI/ })
  t.match(await runCli(['clients', 'create', '--name', 'x', '--audience', ORDERS, '--ttl', 'forever'], env), { code: 1, stderr: /--ttl: "forever" is not a duration/ })
  t.match(await runCli(['clients', 'create', '--audience', ORDERS], env), { code: 1, stderr: /create takes --name/ })
  t.match(await runCli(['clients', 'frobnicate'], env), { code: 1, stderr: /usage: npm run clients/ })
  t.match(await runCli(['clients', 'create', '--nme', 'x'], env), { code: 1, stderr: /Unknown option '--nme'/ })

  const dir = await mkdtemp(join(tmpdir(), 'authgate-jwks-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const { publicKey } = await generateKeyPair('EdDSA')
  await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [await exportJWK(publicKey)] }))
  const signer = await runCli(['clients', 'create', '--name', 'signer', '--audience', ORDERS, '--jwks', join(dir, 'jwks.json')], env)
  t.match(signer, { code: 0, stdout: /private_key_jwt with 1 key\(s\)[\s\S]*client_secret: / })

  const app = await build(t, { database: env })
  const events = await app.db.selectFrom('audit_events').select(['event', 'detail', 'user_agent']).where('event', 'like', 'client_%').orderBy('id').execute()
  t.same(events.map((e) => e.event), ['client_created', 'client_secret_rotated', 'client_disabled', 'client_enabled', 'client_created'])
  t.match(events[0], { user_agent: 'authgate-cli', detail: { client_id: id, scopes: ['orders:read', 'orders:write'], audiences: [ORDERS], token_ttl_s: 300 } })
  t.match(events[1], { detail: { client_id: id, grace_s: 3600 } })
})

t.test('the per-client rate limit counts a client once it is proven: nobody spends another\'s allowance', async (t) => {
  const app = await build(t, { env: { RATE_LIMIT_ENABLED: 'true', RATE_LIMIT_CLIENT_MAX: '3', RATE_LIMIT_TOKEN_MAX: '100' } })
  const orders = await client(app)
  for (let i = 0; i < 5; i++) t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(orders.id, 'guess') })).statusCode, 401)
  for (let i = 0; i < 3; i++) t.ok(await tokenFor(app, orders.authorization))
  const limited = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: orders.authorization })
  t.equal(limited.statusCode, 429)
  t.match(limited.json(), { error: 'temporarily_unavailable' })
  t.ok(limited.headers['retry-after'])
  const other = await client(app)
  t.ok(await tokenFor(app, other.authorization), 'another client has its own count')
})
