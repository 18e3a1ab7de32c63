import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { sql } from 'kysely'
import { Migrator } from 'kysely/migration'
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { migrations } from '../migrations/index.ts'
import { runCli } from '../src/cli.ts'
import { loadConfig } from '../src/config.ts'
import { createDb } from '../src/db/index.ts'
import { silentLogger } from '../src/lib/logger.ts'
import { NotifiedCache } from '../src/lib/notified-cache.ts'
import { createCleanup } from '../src/services/cleanup.ts'
import { CLIENT_REFUSALS, createClients, type CachedClient } from '../src/services/oauth/clients.ts'
import { bearer, build, claimsOf, eventually, freshDatabase, login, postForm, postJson, SECRET_KEY, TestClock } from './helper.ts'

// Service identities (issue 16): OAuth 2.0 client credentials at /oauth/token, the tokens
// (RFC 9068) and their checks at introspection, forward-auth and verify; the refresh grant and
// revocation for users; the clients CLI. Both engines.

const ORDERS = 'https://orders.example.test'
const BILLING = 'https://billing.example.test'
const INTROSPECTOR = { id: 'gateway', secret: 'introspection-secret-0123456789' }

const basic = (id: string, secret: string): string => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`

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
    const descriptions = new Map<string, string>()
    for (const [name, pending, status, error] of cases) {
      const res = await pending
      t.equal(res.statusCode, status, `${name}: ${res.body}`)
      t.match(res.json(), { error, error_description: String }, name)
      descriptions.set(name, res.json().error_description)
      // Issue 26: every invalid_client says why, beyond the words every one of them starts with.
      if (error === 'invalid_client') t.match(res.json().error_description, /^Client authentication failed: [a-z].{20,}$/, `${name}: says why`)
      t.match(res.headers['content-type'], /^application\/json/, name)
      if (status === 401) t.equal(res.headers['www-authenticate'], 'Basic realm="authgate"', name)
      if (status === 415) t.match(res.json().error_description, /x-www-form-urlencoded or application\/json/, name)
    }
    // No oracle: who does not hold a client's secret cannot tell its id from one nobody has.
    t.equal(descriptions.get('a wrong secret'), descriptions.get('an unknown client'), 'a wrong secret and an unknown client read the same')
    t.equal(descriptions.get('a wrong secret'), 'Client authentication failed: unknown client, or a wrong or expired secret.')
    t.equal(descriptions.get('a disabled client'), 'Client authentication failed: the client is disabled.', 'disabled: said to whom proved the secret')
    t.match(descriptions.get('no client at all'), /no client credentials/)
  })

  t.test('unknown parameters are ignored (RFC 6749 §3.2)', async (t) => {
    const res = await postForm(app, '/oauth/token', { grant_type: 'client_credentials', foo: 'bar' }, { authorization: orders.authorization })
    t.equal(res.statusCode, 200, res.body)
  })

  t.test('a service token at introspection, forward-auth and verify; the user routes refuse it', async (t) => {
    const access = await tokenFor(app, orders.authorization, { scope: 'orders:read' })
    const gateway = await client(app, { scopes: ['introspect', 'introspect:all'] })
    const introspected = await postForm(app, '/api/token/introspect', { token: access }, { authorization: gateway.authorization })
    t.equal(introspected.statusCode, 200)
    t.match(introspected.json(), { active: true, sub: orders.id, client_id: orders.id, scope: 'orders:read', aud: ORDERS, token_type: 'Bearer' })
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
    t.same((await postForm(app, '/api/token/introspect', { token: access }, { authorization: gateway.authorization })).json(), { active: false }, 'disabled: inactive')
    t.equal((await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(ORDERS)}`, headers: bearer(access) })).statusCode, 401, 'disabled: refused')
    t.equal((await postJson(app, '/api/token/verify', { token: access })).statusCode, 401, 'disabled: not valid')
    await app.clients.enable(orders.id)
    t.equal((await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(ORDERS)}`, headers: bearer(access) })).statusCode, 204, 'enabled again')
  })

  t.test('introspection by a client of the database that holds the introspect scope; one without it gets 403', async (t) => {
    const introspector = await client(app, { scopes: ['introspect', 'introspect:users'] })
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
    t.equal((await grant(await assertion({ exp: now + 3600 }))).statusCode, 200, 'an assertion that lives an hour, as Authlib signs them')
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
    t.equal(Number((await app.db.selectFrom('oauth_client_assertions').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n), 4, 'one row per assertion accepted, kept until it expires')
    clock.advance(3600 + 60)
    t.match(await createCleanup({ db: app.db, config: app.config, clock, audit: app.audit, log: silentLogger }).flush(), { assertions: 4 }, 'then pruned')
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
    grant_types_supported: ['client_credentials', 'refresh_token', 'urn:ietf:params:oauth:grant-type:token-exchange', 'urn:ietf:params:oauth:grant-type:jwt-bearer'],
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
  t.same(rest, { token_endpoint_auth_method: 'client_secret_basic' }, '--json prints exactly {"client_id","token_endpoint_auth_method","client_secret"}')
  t.match(id, /^[0-9a-f]{32}$/)
  t.equal(Buffer.from(secret, 'base64url').length, 32, '256 random bits')

  const list = await runCli(['clients', 'list'], env)
  t.match(list.stdout, new RegExp(`${id}  "orders"\\n  scopes: orders:read orders:write\\n  audiences: ${ORDERS}\\n  token lifetime: 300 s\\n  authentication: client_secret_basic \\(client_secret_post too\\)`))
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
  t.match(signer, { code: 0, stdout: /authentication: private_key_jwt with 1 key\(s\), no secret\n/ })
  t.notMatch(signer.stdout, /client_secret:/, 'a key client is given no secret')
  const signerJson = await runCli(['clients', 'create', '--name', 'signer', '--audience', ORDERS, '--jwks', join(dir, 'jwks.json'), '--json'], env)
  const signerId = JSON.parse(signerJson.stdout).client_id
  t.same(JSON.parse(signerJson.stdout), { client_id: signerId, token_endpoint_auth_method: 'private_key_jwt' }, '--json: no client_secret')
  t.match(JSON.parse((await runCli(['clients', 'show', signerId, '--json'], env)).stdout), { token_endpoint_auth_method: 'private_key_jwt', private_key_jwt: true, secrets: [] })
  t.match(await runCli(['clients', 'rotate-secret', signerId], env), { code: 1, stderr: /private_key_jwt: it has no secret/ })

  const app = await build(t, { database: env })
  const events = await app.db.selectFrom('audit_events').select(['event', 'detail', 'user_agent']).where('event', 'like', 'client_%').orderBy('id').execute()
  t.same(events.map((e) => e.event), ['client_created', 'client_secret_rotated', 'client_disabled', 'client_enabled', 'client_created', 'client_created'])
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

t.test('one authentication method per client (RFC 7591 token_endpoint_auth_method): a key client has no secret, a secret client takes no assertion, and a refusal names the method', async (t) => {
  const app = await build(t)
  const { publicKey, privateKey } = await generateKeyPair('ES256')
  const created = await app.clients.create({ name: 'signer', scopes: ['orders:read', 'introspect'], audiences: [ORDERS], jwks: { keys: [{ ...await exportJWK(publicKey), kid: 'k1' }] } })
  t.equal(created.secret, null, 'no secret is made for a private_key_jwt client')
  t.equal(created.client.authMethod, 'private_key_jwt')
  t.same((await app.clients.show(created.client.id)).secrets, [])
  await t.rejects(app.clients.rotateSecret(created.client.id, 0), { errors: [{ field: 'client', message: /private_key_jwt: it has no secret/ }] }, 'nor given one later')
  const id = created.client.id
  for (const [how, res] of [
    ['HTTP Basic', await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(id, 'any secret') })],
    ['client_secret_post', await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: id, client_secret: 'any secret' })],
    ['HTTP Basic at introspection', await postForm(app, '/api/token/introspect', { token: 'x' }, { authorization: basic(id, 'any secret') })]
  ] as const) {
    t.equal(res.statusCode, 401, how)
    t.same(res.json(), { error: 'invalid_client', error_description: 'Client authentication failed: the client is registered for private_key_jwt: send a client_assertion signed with its key (RFC 7523), it has no secret.' }, how)
  }
  const now = Math.floor(app.clock.now().getTime() / 1000)
  const signed = (sub: string) => new SignJWT({ jti: randomUUID() }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(sub).setSubject(sub)
    .setAudience(`${app.config.JWT_ISSUER}/oauth/token`).setIssuedAt(now).setExpirationTime(now + 60).sign(privateKey)
  const grant = async (assertion: string) => await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion })
  t.equal((await grant(await signed(id))).statusCode, 200, 'its assertion works')

  const secretClient = await client(app)
  t.equal((await app.clients.show(secretClient.id)).client.authMethod, 'client_secret_basic')
  t.ok(await tokenFor(app, secretClient.authorization), 'a secret client: HTTP Basic')
  t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: secretClient.id, client_secret: secretClient.secret })).statusCode, 200, 'and client_secret_post, the same secret in the body')
  const refused = await grant(await signed(secretClient.id))
  t.equal(refused.statusCode, 401)
  t.same(refused.json(), { error: 'invalid_client', error_description: 'Client authentication failed: the client is registered for client_secret_basic: send its secret (HTTP Basic, or client_id and client_secret in the body), not a client_assertion.' })
})

t.test('migration 0013: a key client made before loses the secret it was given; a secret client keeps both ways; an introspecting client keeps users\' tokens', async (t) => {
  const database = await freshDatabase(t, { migrated: false })
  const db = createDb(await loadConfig({ ...database, SECRET_KEY }, () => {}))
  const migrated = await new Migrator({ db, provider: { getMigrations: async () => migrations } }).migrateTo('0012-second-factors')
  if (migrated.error !== undefined) throw migrated.error
  // Clients as the service made them before 0013: every one with a secret, a key client too.
  const { publicKey, privateKey } = await generateKeyPair('ES256')
  const jwks = JSON.stringify({ keys: [{ ...await exportJWK(publicKey), kid: 'k1' }] })
  const [keyId, secretId] = [randomBytes(16).toString('hex'), randomBytes(16).toString('hex')]
  const hash = (secret: string) => createHash('sha256').update(secret).digest('base64url')
  await sql`insert into oauth_clients (id, name, scopes, audiences, token_ttl_s, jwks, created_at) values
    (${keyId}, 'signer', cast(${['orders:read']} as text[]), cast(${[ORDERS]} as text[]), 600, cast(${jwks} as jsonb), now()),
    (${secretId}, 'gateway', cast(${['introspect']} as text[]), cast(${[ORDERS]} as text[]), 600, null, now())`.execute(db)
  await sql`insert into oauth_client_secrets (id, client_id, secret_hash, created_at) values
    (${randomUUID()}, ${keyId}, ${hash('key-client-secret')}, now()), (${randomUUID()}, ${secretId}, ${hash('secret-client-secret')}, now())`.execute(db)
  await db.destroy()

  const app = await build(t, { database })
  t.equal((await app.clients.show(keyId)).client.authMethod, 'private_key_jwt')
  t.same((await app.clients.show(keyId)).secrets, [], 'the key client\'s secret row is gone')
  const old = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(keyId, 'key-client-secret') })
  t.equal(old.statusCode, 401, 'the secret it was given stops working')
  t.match(old.json(), { error_description: /registered for private_key_jwt/ })
  const now = Math.floor(app.clock.now().getTime() / 1000)
  const assertion = await new SignJWT({ jti: randomUUID() }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(keyId).setSubject(keyId)
    .setAudience(app.config.JWT_ISSUER).setExpirationTime(now + 60).sign(privateKey)
  t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion })).statusCode, 200, 'its key works as before')

  const gateway = await app.clients.show(secretId)
  t.equal(gateway.client.authMethod, 'client_secret_basic')
  t.same(gateway.client.scopes, ['introspect', 'introspect:users'], 'introspect:users added: it saw users\' tokens, and still does')
  const { access } = await login(app)
  t.match((await postForm(app, '/api/token/introspect', { token: access }, { authorization: basic(secretId, 'secret-client-secret') })).json(), { active: true, token_type: 'Bearer' }, 'HTTP Basic as before')
  t.match((await postForm(app, '/api/token/introspect', { token: access, client_id: secretId, client_secret: 'secret-client-secret' })).json(), { active: true }, 'client_secret_post as before')
})

t.test('introspection answers active only to a client the token is addressed to, or one allowed to see it; token_type is Bearer (RFC 7662 §2.2)', async (t) => {
  const USERS = 'https://users.example.test'
  const app = await build(t, { env: { INTROSPECTION_CLIENTS: `${INTROSPECTOR.id}:${INTROSPECTOR.secret}` } })
  const billing = await client(app, { scopes: ['billing:read', 'introspect'], audiences: [BILLING] })
  const users = await client(app, { scopes: ['introspect', 'introspect:users'], audiences: [USERS] })
  const orders = await client(app, { scopes: ['introspect'], audiences: [ORDERS] })
  const all = await client(app, { scopes: ['introspect', 'introspect:all'], audiences: [ORDERS] })
  const configured = basic(INTROSPECTOR.id, INTROSPECTOR.secret)
  const introspect = async (token: string, authorization: string) => {
    const res = await postForm(app, '/api/token/introspect', { token }, { authorization })
    t.equal(res.statusCode, 200, res.body)
    return res.json()
  }

  const billingToken = await tokenFor(app, billing.authorization)
  t.same(await introspect(billingToken, users.authorization), { active: false }, 'a billing token is not active for the users service')
  t.same(await introspect(billingToken, orders.authorization), { active: false }, 'nor for orders')
  t.same(await introspect(billingToken, configured), { active: false }, 'nor for INTROSPECTION_CLIENTS: users\' tokens only')
  t.match(await introspect(billingToken, billing.authorization), { active: true, aud: BILLING, client_id: billing.id, token_type: 'Bearer' }, 'active for the client whose audience it names')
  t.match(await introspect(billingToken, all.authorization), { active: true, aud: BILLING, token_type: 'Bearer' }, 'and for one holding introspect:all')

  const { access, user } = await login(app)
  t.match(await introspect(access, users.authorization), { active: true, user_id: user.id, aud: app.config.JWT_AUDIENCE, token_type: 'Bearer' }, 'a user\'s token: active for introspect:users')
  t.match(await introspect(access, configured), { active: true, token_type: 'Bearer' }, 'and for INTROSPECTION_CLIENTS')
  t.match(await introspect(access, all.authorization), { active: true, token_type: 'Bearer' }, 'and for introspect:all')
  t.same(await introspect(access, orders.authorization), { active: false }, 'not for a client holding introspect alone')
  t.same(await introspect(access, billing.authorization), { active: false })
})

t.test('private_key_jwt as third-party clients sign it: an assertion of up to an hour is taken, its jti refused until it expires, one of 20 at once across replicas; each refusal says why', async (t) => {
  const clock = new TestClock()
  const database = await freshDatabase(t)
  const logLines: string[] = []
  const a = await build(t, { clock, database, logLines })
  const b = process.env.DB_ENGINE === 'postgres' ? await build(t, { clock, database }) : a
  const { publicKey, privateKey } = await generateKeyPair('ES256')
  const { client: signer } = await a.clients.create({ name: 'signer', scopes: ['orders:read'], audiences: [ORDERS], jwks: { keys: [{ ...await exportJWK(publicKey), kid: 'k1' }] } })
  const now = Math.floor(clock.now().getTime() / 1000)
  const assertion = (claims: Record<string, unknown> = {}, { key = privateKey, alg = 'ES256' }: { key?: Parameters<SignJWT['sign']>[0], alg?: string } = {}) => new SignJWT({
    jti: randomUUID(), iss: signer.id, sub: signer.id, aud: `${a.config.JWT_ISSUER}/oauth/token`, iat: now, exp: now + 3600, ...claims
  }).setProtectedHeader({ alg, kid: 'k1' }).sign(key)
  const grant = (app: FastifyInstance, clientAssertion: string) => postForm(app, '/oauth/token', {
    grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: clientAssertion
  })
  const why = async (app: FastifyInstance, clientAssertion: string): Promise<string> => {
    const res = await grant(app, clientAssertion)
    t.equal(res.statusCode, 401, res.body)
    t.equal(res.json().error, 'invalid_client')
    return res.json().error_description
  }
  const flush = () => createCleanup({ db: a.db, config: a.config, clock, audit: a.audit, log: silentLogger }).flush()

  // Authlib's PrivateKeyJWT signs exp = iat + 3600.
  const hour = await assertion()
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => grant(i % 2 === 0 ? a : b, hour)))
  t.equal(answers.filter((res) => res.statusCode === 200).length, 1, `one of 20 at once${b === a ? '' : ', on two replicas'}: ${answers.map((res) => res.statusCode).join(' ')}`)
  for (const res of answers.filter((one) => one.statusCode !== 200)) t.same(res.json(), { error: 'invalid_client', error_description: `Client authentication failed: ${CLIENT_REFUSALS.replayed}` })
  const row = await a.db.selectFrom('oauth_client_assertions').select('expires_at').where('client_id', '=', signer.id).executeTakeFirstOrThrow()
  t.equal(row.expires_at.getTime(), (now + 3600) * 1000 + 30_000, 'its jti kept until its exp and the clock skew')
  // Near its end it can still be presented: pruning keeps its jti, and it is still refused.
  clock.advance(3600 - 5)
  t.match(await flush(), { assertions: 0 }, 'not pruned while it could be presented')
  t.match(await why(b, hour), /used already/)
  clock.advance(5 + 31)
  t.match(await flush(), { assertions: 1 }, 'pruned once it cannot')
  t.match(await why(a, hour), /expired at/, 'and refused as expired')
  clock.advance(-(3600 + 31))

  t.equal((await grant(a, await assertion({ exp: now + 3600 + 30 }))).statusCode, 200, 'an hour and the skew')
  t.match(await why(a, await assertion({ exp: now + 3600 + 31 })), /expires more than 3600 s ahead.*at most an hour/)
  t.match(await why(a, await assertion({ exp: now - 120 })), /expired at/)
  t.match(await why(a, await assertion({ nbf: now + 120 })), /not valid yet/)
  // Past what a date can be printed as: refused as no date, never a 500 from printing it.
  for (const exp of [1e20, -1e20, undefined]) t.match(await why(a, await assertion({ exp })), /needs an exp \(a NumericDate/, `exp ${exp}`)
  t.match(await why(a, await assertion({ aud: 'https://elsewhere.example/oauth/token' })), /aud of the client_assertion must be the token endpoint/)
  t.match(await why(a, await assertion({ jti: undefined })), /needs a jti/)
  t.match(await why(a, await assertion({ iss: 'someone' })), /iss and sub, both the client id/)
  t.match(await why(a, await assertion({}, { key: new TextEncoder().encode('a shared secret of 32 bytes......'), alg: 'HS256' })), /signed with "HS256"/)
  t.match(await why(a, 'not.a.jwt'), /not a JWT/)
  // Who does not hold the key cannot tell a client that exists from one that does not.
  const stranger = await generateKeyPair('ES256')
  const unknown = randomBytes(16).toString('hex')
  const wrongKey = await why(a, await assertion({}, { key: stranger.privateKey }))
  t.equal(wrongKey, `Client authentication failed: ${CLIENT_REFUSALS.assertionKey}`)
  t.equal(await why(a, await assertion({ iss: unknown, sub: unknown })), wrongKey, 'an unknown client reads the same as a wrong key')
  await a.clients.disable(signer.id)
  t.equal(await why(a, await assertion()), `Client authentication failed: ${CLIENT_REFUSALS.disabled}`, 'disabled: said once the key is proven')
  // The operator sees the same reason in the log, with the client_id the request named.
  const logged = logLines.map((line) => JSON.parse(line)).filter((line) => line.msg === 'client authentication failed')
  t.ok(logged.some((line) => /used already/.test(line.reason)), 'a replay is logged')
  t.ok(logged.some((line) => /more than 3600 s ahead/.test(line.reason)), 'a too long assertion is logged')
  await a.clients.enable(signer.id)
})

t.test('an unknown client id costs one read, then none while it is remembered as unknown; 20 at once share it; forgotten when a client of that id is made', async (t) => {
  const app = await build(t)
  let reads = 0
  // The clients service on a database that counts the selects it is asked for.
  const db = app.db.withPlugin({
    transformQuery: ({ node }) => { if (node.kind === 'SelectQueryNode') reads++; return node },
    transformResult: async ({ result }) => result
  })
  let now = 1_000_000
  const cache = new NotifiedCache<CachedClient>({ now: () => now })
  cache.heartbeat()
  const clients = createClients({ db, clock: app.clock, keyring: app.keyring, config: app.config, audit: app.audit, cache })
  const id = randomBytes(16).toString('hex')
  const secret = randomBytes(32).toString('base64url')
  const attempts = async (n: number) => await Promise.allSettled(Array.from({ length: n }, async () => await clients.authenticate({ method: 'client_secret_basic', id, secret })))
  const refused = (results: Array<PromiseSettledResult<unknown>>) => results.every((r) => r.status === 'rejected' && (r.reason as Error).message === `Client authentication failed: ${CLIENT_REFUSALS.secret}`)

  t.ok(refused(await attempts(20)), 'unknown')
  t.equal(reads, 1, '20 at once: one read')
  t.ok(refused(await attempts(20)))
  t.equal(reads, 1, 'remembered as unknown: no read')
  now += 5001
  cache.heartbeat()
  t.ok(refused(await attempts(1)))
  t.equal(reads, 2, 'past the cache\'s bound (5 s): read again')

  // A client of that id is made (an operator's restore): what the notification of its insert does on each replica, cache.forget.
  await sql`insert into oauth_clients (id, name, scopes, audiences, token_ttl_s, token_endpoint_auth_method, created_at)
    values (${id}, 'restored', cast(${['orders:read']} as text[]), cast(${[ORDERS]} as text[]), 600, 'client_secret_basic', now())`.execute(app.db)
  await sql`insert into oauth_client_secrets (id, client_id, secret_hash, created_at) values (${randomUUID()}, ${id}, ${createHash('sha256').update(secret).digest('base64url')}, now())`.execute(app.db)
  t.ok(refused(await attempts(1)), 'unheard of, the id is still taken for unknown: it was remembered')
  cache.forget(id)
  t.match(await clients.authenticate({ method: 'client_secret_basic', id, secret }), { id }, 'heard of: found')
})

t.test('two replicas: an id asked for before its client existed is found on the other replica once the insert is notified', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'notifications are PostgreSQL\'s: checked in the PostgreSQL run'
}, async (t) => {
  const database = await freshDatabase(t)
  // A's cache on a clock that stands still, its heartbeats good for an hour: the unknown id it
  // remembers never ages out, so only the notification of the insert can make A find the client.
  // (docs/operations.md: within a second; how soon is the machine's.)
  const cache = new NotifiedCache<CachedClient>({ now: () => 0, heartbeatTimeoutMs: 3_600_000 })
  const a = await build(t, { database, overrides: { clientCache: cache } })
  const b = await build(t, { database })
  t.ok(await eventually(() => cache.live), 'A\'s listener beats: its cache is in use')
  const id = randomBytes(16).toString('hex')
  const secret = randomBytes(32).toString('base64url')
  const ask = () => postForm(a, '/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(id, secret) })
  const first = await Promise.all(Array.from({ length: 20 }, ask))
  t.ok(first.every((res) => res.statusCode === 401), 'unknown on A, 20 at once')
  t.equal(cache.get(id), null, 'remembered as unknown on A')
  await b.db.transaction().execute(async (trx) => {
    await sql`insert into oauth_clients (id, name, scopes, audiences, token_ttl_s, token_endpoint_auth_method, created_at)
      values (${id}, 'restored', cast(${['orders:read']} as text[]), cast(${[ORDERS]} as text[]), 600, 'client_secret_basic', now())`.execute(trx)
    await sql`insert into oauth_client_secrets (id, client_id, secret_hash, created_at) values (${randomUUID()}, ${id}, ${createHash('sha256').update(secret).digest('base64url')}, now())`.execute(trx)
  })
  t.ok(await eventually(async () => (await ask()).statusCode === 200), 'found on A')
})
