import t, { type Test } from 'tap'
import { Aal2RequiredError, AudienceRequiredError, InsufficientScopeError, InvalidClientError, RouteNotFoundError, TokenExpiredError, TokenNotValidError, WrongAudienceError } from '../src/errors.ts'
import type { TokenClaims } from '../src/services/auth/claims.ts'
import { build, claimsOf, login, TestClock } from './helper.ts'

// The one policy verb (auth.authorize) for both kinds of identity, a user's token and a
// service's, and a client that authenticated; the one client authentication verb.

const ORDERS = 'https://orders.example.test'

t.test('authorize answers scope, audience, aal and the admin API for a user, a service and a client', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const { auth, config } = app
  const refused = async (t: Test, promise: Promise<unknown>, error: new (...args: never[]) => Error, message: RegExp | string, why: string): Promise<void> => {
    await t.rejects(promise, error, why)
    await t.rejects(promise, { message }, why)
  }

  t.test('a user', async (t) => {
    const { access } = await login(app)
    const user = await auth.verifyAnyAccess(access)
    t.match(await auth.authorize(user, {}), { kind: 'user', claims: { aud: config.JWT_AUDIENCE }, user: { username: String } }, 'no requirement: its live identity')
    t.match(await auth.authorize(user, { audience: config.JWT_AUDIENCE, aal: 'aal1' }), { kind: 'user' }, 'its own audience, aal1')
    await refused(t, auth.authorize(user, { audience: ORDERS }), WrongAudienceError, /not for this audience/, 'another audience')
    await refused(t, auth.authorize(user, { audience: config.adminAudience }), WrongAudienceError, /not for this audience/, 'the admin API is for services')
    await refused(t, auth.authorize(user, { audience: config.adminAudience, elsewhere: () => new RouteNotFoundError('GET', '/x') }), RouteNotFoundError, /No route/, 'answered as its caller says')
    await refused(t, auth.authorize(user, { scopes: ['orders:read'] }), InsufficientScopeError, /orders:read/, 'users hold no scopes')
    await refused(t, auth.authorize(user, { aal: 'aal2' }), Aal2RequiredError, /aal2/, 'a password sign-in is aal1')
    const stepped = { kind: 'user' as const, claims: { ...user.claims as TokenClaims, aal: 'aal2' as const, amr: ['pwd', 'otp'] } }
    t.match(await auth.authorize(stepped, { aal: 'aal2' }), { kind: 'user' }, 'a session stepped up is aal2')
    const out = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: { authorization: `Bearer ${access}` }, payload: {} })
    t.equal(out.statusCode, 204)
    await refused(t, auth.authorize(user, {}), TokenNotValidError, /invalid or expired/, 'its session ended')
    await refused(t, auth.authorize(user, { audience: ORDERS }), WrongAudienceError, /not for this audience/, 'the audience is judged before the session')
  })

  t.test('a service', async (t) => {
    const { client } = await app.clients.create({ name: 'orders', scopes: ['orders:read', 'admin:users:read'], audiences: [ORDERS, config.adminAudience] })
    const tokenFor = async (audience: string) => auth.verifyAnyAccess(app.clients.issue(client, { audience }).access_token)
    const service = await tokenFor(ORDERS)
    t.match(await auth.authorize(service, { audience: ORDERS, scopes: ['orders:read'] }), { kind: 'service', client: { id: client.id }, scopes: ['orders:read', 'admin:users:read'] }, 'its audience and a scope it holds')
    await refused(t, auth.authorize(service, {}), AudienceRequiredError, /audience/, 'a service token is taken only for an audience named')
    await refused(t, auth.authorize(service, { audience: ORDERS, aal: 'aal2' }), Aal2RequiredError, /aal2/, 'no person behind it: no aal2')
    await refused(t, auth.authorize(service, { audience: 'https://billing.example.test' }), WrongAudienceError, /not for this audience/, 'another audience')
    await refused(t, auth.authorize(service, { audience: ORDERS, scopes: ['orders:write'] }), InsufficientScopeError, /orders:write/, 'a scope it does not hold')
    const admin = await tokenFor(config.adminAudience)
    t.match(await auth.authorize(admin, { audience: config.adminAudience, scopes: ['admin:users:read'] }), { kind: 'service' }, 'the admin API, with the scope')
    await refused(t, auth.authorize(admin, { audience: config.adminAudience, scopes: ['admin:users:write'] }), InsufficientScopeError, /admin:users:write/, 'the admin API, without the scope')
    clock.advance(601)
    await refused(t, auth.authorize(admin, { audience: config.adminAudience, scopes: ['admin:users:read'] }), TokenExpiredError, /expired/, 'expired, once its audience is known')
    clock.advance(-601)
    await app.clients.disable(client.id)
    await refused(t, auth.authorize(service, { audience: ORDERS }), TokenNotValidError, /invalid or expired/, 'its client disabled')
  })

  t.test('a client that authenticated', async (t) => {
    const { client } = await app.clients.create({ name: 'gateway', scopes: ['introspect'], audiences: [ORDERS] })
    const subject = { kind: 'client' as const, client }
    t.same(await auth.authorize(subject, { scopes: ['introspect'], audience: ORDERS }), subject, 'a scope it holds, tokens addressed to it')
    await refused(t, auth.authorize(subject, { scopes: ['introspect:all'] }), InsufficientScopeError, /introspect:all/, 'a scope it does not hold')
    await refused(t, auth.authorize(subject, { audience: config.JWT_AUDIENCE }), WrongAudienceError, /not for this audience/, 'users\' tokens need introspect:users')
    const all = (await app.clients.create({ name: 'all', scopes: ['introspect', 'introspect:all'], audiences: [ORDERS] })).client
    t.ok(await auth.authorize({ kind: 'client', client: all }, { audience: config.JWT_AUDIENCE }), 'introspect:all sees every token')
  })
})

t.test('authenticateClient: the first-party public client where one is taken, else a client that proves itself', async (t) => {
  const app = await build(t)
  const { auth, config } = app
  const { client, secret } = await app.clients.create({ name: 'orders', scopes: [], audiences: [ORDERS] })
  t.equal(await auth.authenticateClient(undefined, { publicClient: true }), null, 'no client named: the first-party client')
  t.equal(await auth.authenticateClient({ method: 'none', id: config.OAUTH_FIRST_PARTY_CLIENT_ID }, { publicClient: true }), null, 'the first-party client by its id')
  await t.rejects(auth.authenticateClient({ method: 'none', id: client.id }, { publicClient: true }), InvalidClientError, 'another client by its id alone')
  await t.rejects(auth.authenticateClient(undefined, { publicClient: false }), { message: /no client credentials/ }, 'no public client here')
  await t.rejects(auth.authenticateClient({ method: 'none', id: config.OAUTH_FIRST_PARTY_CLIENT_ID }, { publicClient: false }), { message: /no client credentials/ }, 'not even the first-party one')
  t.match(await auth.authenticateClient({ method: 'client_secret_basic', id: client.id, secret }, { publicClient: false }), { id: client.id }, 'its secret')
  await t.rejects(auth.authenticateClient({ method: 'client_secret_post', id: client.id, secret: 'wrong' }, { publicClient: true }), InvalidClientError, 'a wrong secret, public client or not')
})

t.test('the token endpoint ignores a `refresh` parameter (RFC 6749 §3.2): the refresh_token is the one refreshed', async (t) => {
  const app = await build(t)
  const { refresh } = await login(app)
  const res = await app.inject({
    method: 'POST',
    url: '/oauth/token',
    payload: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refresh, refresh: 'not-a-token' }).toString(),
    headers: { 'content-type': 'application/x-www-form-urlencoded' }
  })
  t.equal(res.statusCode, 200, res.body)
  t.equal(claimsOf(res.json().refresh_token).sid, claimsOf(refresh).sid)
})
