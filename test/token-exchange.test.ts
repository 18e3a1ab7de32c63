import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose'
import type { AddressInfo } from 'node:net'
import * as oauth from 'oauth4webapi'
import pg from 'pg'
import t, { type Test } from 'tap'
import { NotifiedCache } from '../src/lib/notified-cache.ts'
import type { CachedClient, NewClient } from '../src/services/oauth/clients.ts'
import { basic, bearer, build, claimsOf, eventually, freshDatabase, lockWaiters, login, operator, postForm, postJson, TestClock } from './helper.ts'

// Token exchange (RFC 8693, issue 30): a client acting for the subject of a token it was given
// gets a token for one audience its policy (--exchange-to) allows; scopes and lifetime only
// narrow; `act` names it; every use checks the chain live. Both engines; two replicas on PostgreSQL.

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
const ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
const A_AUD = 'https://a.example.test'
const B = 'https://b.example.test'
const C = 'https://c.example.test'
const D = 'https://d.example.test'
const E = 'https://e.example.test'
const F = 'https://f.example.test'

interface Client { id: string, secret: string, authorization: string }

/** A client of the registry (a secret client), and its Basic header. */
async function newClient (app: FastifyInstance, input: Omit<NewClient, 'name' | 'jwks' | 'trust'>): Promise<Client> {
  const { client, secret } = await app.clients.create({ name: 'service', ...input })
  return { id: client.id, secret, authorization: basic(client.id, secret) }
}

/** The client's own token (client credentials). */
async function serviceToken (app: FastifyInstance, client: Client, fields: Record<string, string> = {}): Promise<string> {
  const res = await postForm(app, '/oauth/token', { grant_type: 'client_credentials', ...fields }, { authorization: client.authorization })
  if (res.statusCode !== 200) throw new Error(`client credentials: ${res.statusCode} ${res.body}`)
  return res.json().access_token
}

/** A token exchange request by `by` (Basic), or with no client authentication (null). */
const exchange = (app: FastifyInstance, by: Client | null, subject: string | undefined, fields: Record<string, string | string[]> = {}) =>
  postForm(app, '/oauth/token', { grant_type: EXCHANGE, ...(subject === undefined ? {} : { subject_token: subject, subject_token_type: ACCESS }), ...fields }, by === null ? {} : { authorization: by.authorization })

/** The token an exchange answered; throws on any other answer. */
async function exchanged (app: FastifyInstance, by: Client | null, subject: string, fields: Record<string, string> = {}): Promise<string> {
  const res = await exchange(app, by, subject, fields)
  if (res.statusCode !== 200) throw new Error(`exchange: ${res.statusCode} ${res.body}`)
  return res.json().access_token
}

/** Forward auth for `token` with the gateway's query. */
const check = (app: FastifyInstance, token: string, query: Record<string, string> = {}) =>
  app.inject({ url: `/api/auth/check?${new URLSearchParams(query).toString()}`, headers: bearer(token) })

/** What introspection answers `client` of `token`. */
const introspect = async (app: FastifyInstance, client: Client, token: string) =>
  (await postForm(app, '/api/token/introspect', { token }, { authorization: client.authorization })).json()

/** An OAuth refusal (RFC 6749 §5.2): the status, the error, and what its description says. */
function refused (t: Test, res: LightMyRequestResponse, status: number, error: string, description: RegExp, name: string): void {
  t.equal(res.statusCode, status, `${name}: ${res.body}`)
  t.match(res.json(), { error, error_description: description }, name)
}

t.test('token exchange', async (t) => {
  const app = await build(t, { env: { ROLES: 'editor,viewer' } })
  const ops = await operator(app, ['admin:users:write', 'admin:audit:read'])
  const admin = (method: 'GET' | 'POST' | 'PUT', url: string, payload?: object) => app.inject({
    method, url: `/api/admin${url}`, headers: { ...bearer(ops.token), ...(payload === undefined ? {} : { 'content-type': 'application/json' }) }, ...(payload === undefined ? {} : { payload })
  })
  // A user of role editor, signed in (aal1, a password).
  const signedIn = async () => {
    const session = await login(app)
    const res = await admin('PUT', `/users/${session.user.id}/roles`, { roles: ['editor'], reason: 'exchange test' })
    if (res.statusCode !== 200) throw new Error(`roles: ${res.statusCode} ${res.body}`)
    return session
  }

  t.test('a user\'s token exchanged by A toward B: an access token and no refresh token; the user\'s claims, A in act, for B alone, the lifetime the shorter', async (t) => {
    const a = await newClient(app, { scopes: ['b:read', 'b:write', 'c:read'], audiences: [A_AUD], exchangeAudiences: [B, C], tokenTtlS: 60 })
    const { access, user } = await signedIn()
    const subject = claimsOf(access)
    t.notOk('roles' in subject, 'the user\'s own token was signed before the role was given')
    const res = await exchange(app, a, access, { audience: B, scope: 'b:read' })
    t.equal(res.statusCode, 200, res.body)
    t.equal(res.headers['cache-control'], 'no-store')
    const body = res.json()
    t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'issued_token_type', 'scope', 'token_type'], 'no refresh_token')
    t.match(body, { issued_token_type: ACCESS, token_type: 'Bearer', scope: 'b:read' })
    t.equal(decodeProtectedHeader(body.access_token).typ, 'at+jwt')
    const claims = claimsOf(body.access_token)
    t.match(claims, {
      iss: app.config.JWT_ISSUER,
      sub: String(user.id),
      user_id: user.id,
      sid: subject.sid,
      aal: 'aal1',
      amr: ['pwd'],
      auth_time: subject.auth_time,
      client_id: a.id,
      aud: B,
      scope: 'b:read',
      gty: EXCHANGE,
      token_type: 'access',
      jti: /^[0-9a-f-]{36}$/
    })
    t.same(claims.roles, ['editor'], 'the user\'s roles of now')
    t.same(claims.act, { sub: a.id }, 'A acts')
    t.not(claims.jti, subject.jti, 'a token of its own')
    t.equal(claims.exp, (claims.iat as number) + 60, 'A\'s lifetime (60 s), shorter than the subject\'s')
    t.ok((claims.exp as number) <= (subject.exp as number))
    t.equal(body.expires_in, 60)

    // A client of a longer lifetime: the subject token's end bounds it.
    const long = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B], tokenTtlS: 3600 })
    const bounded = claimsOf(await exchanged(app, long, access))
    t.equal(bounded.exp, subject.exp, 'the subject token\'s exp, shorter than A\'s hour')
    t.ok((bounded.exp as number) < (bounded.iat as number) + 3600)
    t.equal(bounded.aud, B, 'its only exchange audience, when none is named')
    t.equal(bounded.scope, 'b:read', 'every scope of its policy by default, for a user\'s token')
  })

  t.test('a service\'s token (S, for A) exchanged by A: sub S, act A, the scopes both hold; a subject token for another audience is refused (Keycloak #51000)', async (t) => {
    const a = await newClient(app, { scopes: ['b:read', 'b:write'], audiences: [A_AUD], exchangeAudiences: [B] })
    const s = await newClient(app, { scopes: ['b:read', 'b:write', 'a:call'], audiences: [A_AUD] })
    const sToken = await serviceToken(app, s)
    const token = await exchanged(app, a, sToken)
    const claims = claimsOf(token)
    t.match(claims, { sub: s.id, client_id: a.id, aud: B, scope: 'b:read b:write', gty: EXCHANGE })
    t.same(claims.act, { sub: a.id })
    for (const name of ['user_id', 'sid', 'roles', 'aal', 'amr', 'auth_time']) t.notOk(name in claims, `no ${name}: no user`)
    t.equal(claims.exp, claimsOf(sToken).exp, 'both of 600 s: the subject\'s end')

    const elsewhere = await newClient(app, { scopes: ['b:read'], audiences: [C] })
    refused(t, await exchange(app, a, await serviceToken(app, elsewhere)), 400, 'invalid_request', /^subject_token is for "https:\/\/c\.example\.test", not for this client/, 'a service token for C, given to A')
    const bToken = await exchanged(app, a, (await signedIn()).access)
    refused(t, await exchange(app, a, bToken), 400, 'invalid_request', /^subject_token is for "https:\/\/b\.example\.test", not for this client/, 'A\'s own exchanged token for B, given back to A')
  })

  t.test('a chain: the client a token is for exchanges it again, act nests, scopes only narrow, the lifetime never grows; the 5th actor is refused', async (t) => {
    const a = await newClient(app, { scopes: ['s1', 's2', 's3'], audiences: [A_AUD], exchangeAudiences: [B] })
    const b = await newClient(app, { scopes: ['s1', 's2', 's3'], audiences: [B], exchangeAudiences: [C] })
    const c = await newClient(app, { scopes: ['s1', 's2'], audiences: [C], exchangeAudiences: [D] })
    const d = await newClient(app, { scopes: ['s1', 's2'], audiences: [D], exchangeAudiences: [E] })
    const e = await newClient(app, { scopes: ['s1'], audiences: [E], exchangeAudiences: [F] })
    const { access, user } = await signedIn()
    const t1 = await exchanged(app, a, access, { scope: 's1 s2' })
    refused(t, await exchange(app, b, t1, { scope: 's1 s2 s3' }), 400, 'invalid_scope', /"s3"/, 'B asks s3, which the token it was given lacks')
    const t2 = await exchanged(app, b, t1)
    const c2 = claimsOf(t2)
    t.match(c2, { sub: String(user.id), user_id: user.id, client_id: b.id, aud: C, scope: 's1 s2' })
    t.same(c2.act, { sub: b.id, act: { sub: a.id, aud: B } }, 'B acts, after A, which made a token for B')
    const t3 = await exchanged(app, c, t2, { scope: 's1' })
    refused(t, await exchange(app, d, t3, { scope: 's2' }), 400, 'invalid_scope', /"s2"/, 'D asks s2, dropped by C')
    const t4 = await exchanged(app, d, t3)
    const c4 = claimsOf(t4)
    t.equal(c4.scope, 's1')
    t.same(c4.act, { sub: d.id, act: { sub: c.id, aud: D, act: { sub: b.id, aud: C, act: { sub: a.id, aud: B } } } }, 'four actors, the one acting now outermost')
    const exps = [access, t1, t2, t3, t4].map((token) => claimsOf(token).exp as number)
    t.ok(exps.every((exp, i) => i === 0 || exp <= exps[i - 1]!), `the lifetime never grows: ${exps.join(' ')}`)
    const through = await check(app, t4, { audience: E })
    t.equal(through.statusCode, 204, through.body)
    t.equal(through.headers['x-auth-actor'], [d.id, c.id, b.id, a.id].join(','))
    refused(t, await exchange(app, e, t4), 400, 'invalid_request', /exchanged 3 times already/, 'a 5th actor (MAX_ACTORS 4)')

    // Every actor of the chain stays live: the first one disabled, the last token is dead.
    await app.clients.disable(a.id)
    t.equal((await check(app, t4, { audience: E })).statusCode, 401, 'A, first in the chain, disabled')
    await app.clients.enable(a.id)
    t.equal((await check(app, t4, { audience: E })).statusCode, 204, 'A enabled again')

    // Every client of the chain is judged by its policy now: a scope or an audience A no longer has.
    await app.clients.update(a.id, { scopes: ['s2', 's3'] })
    t.equal((await check(app, t4, { audience: E })).headers['x-auth-scope'], '', 'A no longer holds s1: neither does the last token')
    await app.clients.update(a.id, { scopes: ['s1', 's2', 's3'] })
    t.equal((await check(app, t4, { audience: E })).headers['x-auth-scope'], 's1')
    await app.clients.update(a.id, { exchangeAudiences: [F] })
    t.equal((await check(app, t4, { audience: E })).statusCode, 401, 'A may no longer exchange toward B, where the chain began')
    await app.clients.update(a.id, { exchangeAudiences: [B] })
    t.equal((await check(app, t4, { audience: E })).statusCode, 204)
  })

  t.test('a service subject\'s client is judged by its policy now: a scope it lost is gone from the tokens acting for it', async (t) => {
    const s = await newClient(app, { scopes: ['a:read', 'a:write'], audiences: [A_AUD] })
    const a = await newClient(app, { scopes: ['a:read', 'a:write'], audiences: [A_AUD], exchangeAudiences: [B] })
    const token = await exchanged(app, a, await serviceToken(app, s))
    t.equal((await check(app, token, { audience: B })).headers['x-auth-scope'], 'a:read%20a:write')
    await app.clients.update(s.id, { scopes: ['a:read'] })
    t.equal((await check(app, token, { audience: B })).headers['x-auth-scope'], 'a:read', 'S no longer holds a:write')
  })

  t.test('a token of another grant is never a user\'s own: an exchanged token made for JWT_AUDIENCE, signed by authgate\'s key, is refused everywhere', async (t) => {
    const a = await newClient(app, { scopes: [], audiences: [A_AUD], exchangeAudiences: [B] })
    const { access } = await signedIn()
    const claims = claimsOf(await exchanged(app, a, access))
    // What no policy can ask for (JWT_AUDIENCE is refused as an exchange audience); as if an operator changed JWT_AUDIENCE to one that was.
    const forged = app.keyring.signService({ ...claims, aud: app.config.JWT_AUDIENCE } as never)
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(forged) })).statusCode, 401, '/api/detail')
    t.equal((await check(app, forged)).statusCode, 401, 'forward auth for users')
    t.equal((await check(app, forged, { audience: app.config.JWT_AUDIENCE })).statusCode, 401, 'forward auth naming JWT_AUDIENCE')
  })

  t.test('escalation refused: an audience the policy does not allow, a client with no policy, a scope beyond the policy or the subject token', async (t) => {
    const a = await newClient(app, { scopes: ['b:read', 'x:write'], audiences: [A_AUD, C], exchangeAudiences: [B] })
    const plain = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD] })
    const { access } = await signedIn()
    for (const [name, audience] of [['an audience outside its policy', D], ['one of its own audiences, not an exchange audience', C], ['the users\' audience', app.config.JWT_AUDIENCE], ['the admin API', app.config.adminAudience]] as const) {
      refused(t, await exchange(app, a, access, { audience }), 400, 'invalid_target', /^The client may not exchange tokens toward/, name)
      refused(t, await exchange(app, a, access, { resource: audience }), 400, 'invalid_target', /^The client may not exchange tokens toward/, `${name}, as resource`)
    }
    refused(t, await exchange(app, plain, access, { audience: B }), 400, 'unauthorized_client', /no --exchange-to audience/, 'a client without --exchange-to (Zitadel-style escalation)')
    refused(t, await exchange(app, plain, access), 400, 'unauthorized_client', /no --exchange-to audience/, 'a client without --exchange-to, no audience named')
    const several = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B, C] })
    refused(t, await exchange(app, several, access), 400, 'invalid_target', /^Name the audience/, 'no audience named by a client of two')

    refused(t, await exchange(app, a, access, { scope: 'b:read b:admin' }), 400, 'invalid_scope', /"b:admin"/, 'a user\'s token: a scope beyond A\'s policy')
    const s = await newClient(app, { scopes: ['b:read', 'b:write'], audiences: [A_AUD] })
    const narrow = await serviceToken(app, s, { scope: 'b:read' })
    refused(t, await exchange(app, a, narrow, { scope: 'x:write' }), 400, 'invalid_scope', /"x:write"/, 'a service\'s token: a scope A holds and the subject token does not')
    const wider = await newClient(app, { scopes: ['b:read', 'b:write'], audiences: [A_AUD], exchangeAudiences: [B] })
    refused(t, await exchange(app, wider, narrow, { scope: 'b:read b:write' }), 400, 'invalid_scope', /"b:write"/, 'a service\'s token: a scope its client holds, not the token')
    t.equal(claimsOf(await exchanged(app, wider, narrow)).scope, 'b:read', 'by default, what the subject token holds')
  })

  t.test('an exchanged token is an access token: neither refresh grant takes it', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const token = await exchanged(app, a, (await signedIn()).access)
    refused(t, await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: token }), 400, 'invalid_grant', /refresh token is invalid/, 'the refresh_token grant')
    refused(t, await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: token }, { authorization: a.authorization }), 400, 'invalid_grant', /refresh token is invalid/, 'the refresh_token grant, by A')
    const res = await postJson(app, '/api/token/refresh', { refresh: token })
    t.equal(res.statusCode, 401, res.body)
    t.match(res.json(), { code: 'token_not_valid' })
  })

  t.test('the acting client disabled: forward auth 401, introspection inactive, its next exchange invalid_client (Keycloak CVE-2026-93999 analog); enabled: all work again', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const gate = await newClient(app, { scopes: ['introspect'], audiences: [B] })
    const { access } = await signedIn()
    const token = await exchanged(app, a, access)
    t.equal((await check(app, token, { audience: B })).statusCode, 204)
    t.match(await introspect(app, gate, token), { active: true })
    await app.clients.disable(a.id)
    const res = await check(app, token, { audience: B })
    t.equal(res.statusCode, 401)
    t.match(res.json(), { code: 'token_not_valid' })
    t.same(await introspect(app, gate, token), { active: false })
    refused(t, await exchange(app, a, access), 401, 'invalid_client', /the client is disabled/, 'A exchanges again')
    await app.clients.enable(a.id)
    t.equal((await check(app, token, { audience: B })).statusCode, 204, 'the same token, A enabled')
    t.match(await introspect(app, gate, token), { active: true, client_id: a.id })
    t.equal((await exchange(app, a, access)).statusCode, 200, 'A exchanges again')
  })

  t.test('the policy changed: a token already out for an audience no longer allowed fails at once, and passes once allowed again', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const gate = await newClient(app, { scopes: ['introspect'], audiences: [B] })
    const token = await exchanged(app, a, (await signedIn()).access)
    t.equal((await check(app, token, { audience: B })).statusCode, 204)
    await app.clients.update(a.id, { exchangeAudiences: [C] })
    t.equal((await check(app, token, { audience: B })).statusCode, 401, 'B taken out of A\'s policy')
    t.same(await introspect(app, gate, token), { active: false })
    await app.clients.update(a.id, { exchangeAudiences: [B, C] })
    t.equal((await check(app, token, { audience: B })).statusCode, 204, 'B allowed again')
    // A scope taken from A: its tokens out carry it no more.
    await app.clients.update(a.id, { scopes: [] })
    const narrowed = await check(app, token, { audience: B })
    t.equal(narrowed.statusCode, 204)
    t.equal(narrowed.headers['x-auth-scope'], '', 'b:read, no longer A\'s, is no longer the token\'s')
    t.equal((await check(app, token, { audience: B, scope: 'b:read' })).statusCode, 403)
  })

  t.test('the user signed out: the exchanged token fails forward auth and introspection, and exchanging it again is refused', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const b = await newClient(app, { scopes: ['b:read'], audiences: [B], exchangeAudiences: [C] })
    const gate = await newClient(app, { scopes: ['introspect'], audiences: [B] })
    const { access } = await signedIn()
    const token = await exchanged(app, a, access)
    t.equal((await exchange(app, b, token)).statusCode, 200, 'B exchanges it while the session lives')
    t.equal((await postJson(app, '/api/auth/logout', {}, bearer(access))).statusCode, 204)
    t.equal((await check(app, token, { audience: B })).statusCode, 401)
    t.same(await introspect(app, gate, token), { active: false })
    refused(t, await exchange(app, b, token), 400, 'invalid_request', /^subject_token is no longer active/, 'B exchanges it after the sign-out')
    refused(t, await exchange(app, a, access), 400, 'invalid_request', /^subject_token is no longer active/, 'A exchanges the user\'s token after the sign-out')
  })

  t.test('the user disabled by the admin API: the exchanged token fails forward auth and introspection, and exchanging it again is refused', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const b = await newClient(app, { scopes: ['b:read'], audiences: [B], exchangeAudiences: [C] })
    const gate = await newClient(app, { scopes: ['introspect'], audiences: [B] })
    const { access, user } = await signedIn()
    const token = await exchanged(app, a, access)
    t.equal((await check(app, token, { audience: B })).statusCode, 204)
    const res = await admin('POST', `/users/${user.id}/disable`, { reason: 'exchange test' })
    t.equal(res.statusCode, 200, res.body)
    t.equal((await check(app, token, { audience: B })).statusCode, 401)
    t.same(await introspect(app, gate, token), { active: false })
    refused(t, await exchange(app, b, token), 400, 'invalid_request', /^subject_token is no longer active/, 'B exchanges it')
  })

  t.test('parameters refused, never ignored', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD, C], exchangeAudiences: [B] })
    const { access } = await signedIn()
    const actorToken = await serviceToken(app, a, { audience: C })
    const cases: Array<[string, Promise<LightMyRequestResponse>, number, string, RegExp]> = [
      ['no subject_token', exchange(app, a, undefined, { subject_token_type: ACCESS }), 400, 'invalid_request', /^subject_token is required/],
      ['no subject_token_type', exchange(app, a, undefined, { subject_token: access }), 400, 'invalid_request', /^subject_token_type must be/],
      ['an id_token subject type', exchange(app, a, undefined, { subject_token: access, subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' }), 400, 'invalid_request', /^subject_token_type must be/],
      ['a jwt subject type', exchange(app, a, undefined, { subject_token: access, subject_token_type: 'urn:ietf:params:oauth:token-type:jwt' }), 400, 'invalid_request', /^subject_token_type must be/],
      ['a refresh token asked for', exchange(app, a, access, { requested_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' }), 400, 'invalid_request', /^requested_token_type must be/],
      ['an id_token asked for', exchange(app, a, access, { requested_token_type: 'urn:ietf:params:oauth:token-type:id_token' }), 400, 'invalid_request', /^requested_token_type must be/],
      ['actor_token without its type', exchange(app, a, access, { actor_token: actorToken }), 400, 'invalid_request', /^actor_token and actor_token_type go together/],
      ['actor_token_type without a token', exchange(app, a, access, { actor_token_type: ACCESS }), 400, 'invalid_request', /^actor_token and actor_token_type go together/],
      ['a jwt actor type', exchange(app, a, access, { actor_token: actorToken, actor_token_type: 'urn:ietf:params:oauth:token-type:jwt' }), 400, 'invalid_request', /^actor_token_type must be/],
      ['a refresh_token beside', exchange(app, a, access, { refresh_token: 'x' }), 400, 'invalid_request', /^refresh_token is not a parameter of grant_type=urn:ietf:params:oauth:grant-type:token-exchange/],
      ['an assertion beside', exchange(app, a, access, { assertion: 'x' }), 400, 'invalid_request', /^assertion is not a parameter of grant_type=urn:ietf:params:oauth:grant-type:token-exchange/],
      ['audience and resource both', exchange(app, a, access, { audience: B, resource: C }), 400, 'invalid_target', /one resource/],
      ['two resources', exchange(app, a, access, { resource: [B, C] }), 400, 'invalid_target', /one resource/],
      ['a subject_token that is not a token', exchange(app, a, 'junk'), 400, 'invalid_request', /^subject_token is not a valid access token/],
      ['the user\'s refresh token as subject', exchange(app, a, (await login(app)).refresh), 400, 'invalid_request', /^subject_token is not a valid access token/],
      ['no client authentication, no actor_token', exchange(app, null, access), 401, 'invalid_client', /no client credentials/],
      ['a bare client_id', exchange(app, null, access, { client_id: a.id }), 401, 'invalid_client', /no client credentials/],
      ['a wrong secret', exchange(app, { ...a, authorization: basic(a.id, 'wrong') }, access), 401, 'invalid_client', /wrong or expired secret/]
    ]
    for (const [name, pending, status, error, description] of cases) refused(t, await pending, status, error, description, name)
    // The same subject token, the parameters right: taken.
    t.equal((await exchange(app, a, access, { requested_token_type: ACCESS, audience: B, resource: B })).statusCode, 200, 'requested_token_type access_token; audience and resource naming the same')
    // The grants' own parameters the other way round: a subject_token to the JWT bearer grant and to client credentials.
    refused(t, await postForm(app, '/oauth/token', { grant_type: 'client_credentials', subject_token: access }, { authorization: a.authorization }), 400, 'invalid_request', /^subject_token is not a parameter/, 'subject_token to client credentials')
    refused(t, await postForm(app, '/oauth/token', { grant_type: JWT_BEARER, assertion: 'x', client_id: a.id, actor_token: actorToken }), 400, 'invalid_request', /^actor_token is not a parameter/, 'actor_token to the JWT bearer grant')
  })

  t.test('an expired subject token is refused', async (t) => {
    const clock = new TestClock()
    const timed = await build(t, { clock })
    const a = await newClient(timed, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const { access } = await login(timed)
    const token = await exchanged(timed, a, access)
    clock.advance(300)
    refused(t, await exchange(timed, a, access), 400, 'invalid_request', /has expired/, 'the user\'s token, at its exp')
    const res = await check(timed, token, { audience: B })
    t.equal(res.statusCode, 401, 'the exchanged token ends with its subject')
    t.match(res.json(), { code: 'token_expired' })
  })

  t.test('actor_token: A\'s own token for authgate names A without client authentication; one for another audience, of another client, or a user\'s is refused', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD, app.config.JWT_ISSUER], exchangeAudiences: [B] })
    const other = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const { access } = await signedIn()
    const own = await serviceToken(app, a, { audience: app.config.JWT_ISSUER })
    const res = await exchange(app, null, access, { actor_token: own, actor_token_type: ACCESS })
    t.equal(res.statusCode, 200, res.body)
    const claims = claimsOf(res.json().access_token)
    t.match(claims, { client_id: a.id, aud: B })
    t.same(claims.act, { sub: a.id }, 'A acts')
    t.equal((await exchange(app, a, access, { actor_token: own, actor_token_type: ACCESS })).statusCode, 200, 'A authenticated and its actor_token: the same client')
    t.equal((await exchange(app, null, access, { actor_token: own, actor_token_type: ACCESS, client_id: a.id })).statusCode, 200, 'a bare client_id naming A beside its actor_token')
    refused(t, await exchange(app, null, access, { actor_token: own, actor_token_type: ACCESS, client_id: other.id }), 400, 'invalid_request', /^client_id names another client than the actor_token/, 'a bare client_id naming another client')

    const forA = await serviceToken(app, a, { audience: A_AUD })
    refused(t, await exchange(app, null, access, { actor_token: forA, actor_token_type: ACCESS }), 400, 'invalid_request', /^actor_token must be a token for authgate itself/, 'A\'s token for another audience')
    refused(t, await exchange(app, other, access, { actor_token: own, actor_token_type: ACCESS }), 400, 'invalid_request', /^actor_token is a token of another client/, 'A\'s actor_token, another client authenticated')
    refused(t, await exchange(app, null, access, { actor_token: access, actor_token_type: ACCESS }), 400, 'invalid_request', /^actor_token must be a service's own token/, 'a user\'s token as actor_token')
    refused(t, await exchange(app, null, access, { actor_token: res.json().access_token, actor_token_type: ACCESS }), 400, 'invalid_request', /^actor_token must be a service's own token/, 'an exchanged token as actor_token')
    refused(t, await exchange(app, null, access, { actor_token: 'junk', actor_token_type: ACCESS }), 400, 'invalid_request', /^actor_token is not a valid access token/, 'not a token')
    await app.clients.disable(a.id)
    refused(t, await exchange(app, null, access, { actor_token: own, actor_token_type: ACCESS }), 400, 'invalid_request', /^actor_token is no longer active/, 'A disabled')
  })

  t.test('forward auth: a user\'s exchanged token carries the user\'s headers and the actor, a service\'s its client\'s; it needs an audience; aal2 and the admin API refuse it', async (t) => {
    const a = await newClient(app, { scopes: ['b:read', 'b:write'], audiences: [A_AUD], exchangeAudiences: [B] })
    const { access, user } = await signedIn()
    const token = await exchanged(app, a, access, { scope: 'b:read' })
    const res = await check(app, token, { audience: B, scope: 'b:read' })
    t.equal(res.statusCode, 204, res.body)
    t.match(res.headers, {
      'x-auth-user-id': String(user.id),
      'x-auth-username': user.username,
      'x-auth-email': user.email,
      'x-auth-session-id': claimsOf(access).sid,
      'x-auth-roles': 'editor',
      'x-auth-email-verified': 'false',
      'x-auth-aal': 'aal1',
      'x-auth-amr': 'pwd',
      'x-auth-client-id': a.id,
      'x-auth-scope': 'b:read',
      'x-auth-actor': a.id
    })
    const scope = await check(app, token, { audience: B, scope: 'b:write' })
    t.equal(scope.statusCode, 403, 'b:write, which A holds and the token does not')
    t.match(scope.json(), { code: 'insufficient_scope' })
    const aal2 = await check(app, token, { audience: B, aal: 'aal2' })
    t.equal(aal2.statusCode, 403, 'aal2 asked, the user signed in with a password')
    t.match(aal2.json(), { code: 'aal2_required' })
    const none = await check(app, token)
    t.equal(none.statusCode, 401, 'no audience named')
    t.match(none.json(), { code: 'token_not_valid', detail: /only for an audience the gateway names/ })
    const wrong = await check(app, token, { audience: C })
    t.equal(wrong.statusCode, 401, 'another audience')
    t.match(wrong.json(), { code: 'token_not_valid', detail: /not for this audience/ })
    t.equal((await check(app, token, { audience: app.config.JWT_AUDIENCE })).statusCode, 401, 'the users\' audience')

    const s = await newClient(app, { scopes: ['b:read', 'b:write'], audiences: [A_AUD] })
    const service = await check(app, await exchanged(app, a, await serviceToken(app, s)), { audience: B })
    t.equal(service.statusCode, 204, service.body)
    // Header values are percent-encoded (routes/api/auth/check.ts): the space too.
    t.match(service.headers, { 'x-auth-client-id': s.id, 'x-auth-scope': 'b:read%20b:write', 'x-auth-actor': a.id })
    t.notOk('x-auth-user-id' in service.headers, 'no user')

    const users = await app.inject({ url: '/api/admin/users', headers: bearer(token) })
    t.equal(users.statusCode, 404, 'the admin API: a path that does not exist')
    t.match(users.json(), { code: 'not_found', detail: 'No route for GET /api/admin/users.' })
    await t.rejects(app.clients.create({ name: 'escalate', scopes: ['admin:users:read'], audiences: [A_AUD], exchangeAudiences: [app.config.adminAudience] }),
      { code: 'VALIDATION_FAILED', errors: [{ field: 'exchange_to', message: /admin API/ }] }, 'a policy cannot name the admin API')
    await t.rejects(app.clients.update(a.id, { exchangeAudiences: [B, app.config.adminAudience] }), { errors: [{ field: 'exchange_to' }] }, 'nor be changed to')
  })

  t.test('introspection: the client the token is for sees it active with act and the user; one it is not for sees nothing', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const gate = await newClient(app, { scopes: ['introspect'], audiences: [B] })
    const stranger = await newClient(app, { scopes: ['introspect'], audiences: [C] })
    const { access, user } = await signedIn()
    const token = await exchanged(app, a, access)
    const claims = claimsOf(token)
    const subject = claimsOf(access)
    t.same(await introspect(app, gate, token), {
      active: true,
      sub: String(user.id),
      exp: claims.exp,
      iat: claims.iat,
      iss: app.config.JWT_ISSUER,
      aud: B,
      jti: claims.jti,
      token_type: 'Bearer',
      client_id: a.id,
      scope: 'b:read',
      act: { sub: a.id },
      user_id: user.id,
      username: user.username,
      roles: ['editor'],
      sid: subject.sid,
      aal: 'aal1',
      amr: ['pwd'],
      auth_time: subject.auth_time
    })
    t.same(await introspect(app, stranger, token), { active: false }, 'a client of another audience')
    const s = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD] })
    const service = await introspect(app, gate, await exchanged(app, a, await serviceToken(app, s)))
    t.match(service, { active: true, sub: s.id, client_id: a.id, scope: 'b:read', act: { sub: a.id } })
    t.notOk('user_id' in service || 'username' in service || 'sid' in service, 'a service\'s: no user')
  })

  t.test('audit: token_exchanged with the user, the subject, the actors, the audience and the scope, read through the admin API', async (t) => {
    const a = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
    const b = await newClient(app, { scopes: ['b:read'], audiences: [B], exchangeAudiences: [C] })
    const { access, user } = await signedIn()
    const first = claimsOf(await exchanged(app, a, access))
    const second = claimsOf(await exchanged(app, b, await exchanged(app, a, access)))
    await app.audit.flush()
    const res = await admin('GET', `/audit?user_id=${user.id}&event=token_exchanged`)
    t.equal(res.statusCode, 200, res.body)
    const events = res.json().events as Array<{ event: string, user_id: number, session_id: string, detail: Record<string, unknown> }>
    t.equal(events.length, 3, 'one event per exchange')
    const of = (jti: unknown) => events.find((event) => event.detail.jti === jti)
    t.match(of(first.jti), {
      event: 'token_exchanged',
      outcome: 'success',
      user_id: user.id,
      session_id: first.sid,
      detail: { subject: String(user.id), subject_kind: 'user', actor: a.id, act: [a.id], audience: B, scope: 'b:read', exp: first.exp }
    })
    t.match(of(second.jti), { user_id: user.id, detail: { subject: String(user.id), subject_kind: 'user', actor: b.id, act: [b.id, a.id], audience: C } })
    t.same(of(second.jti)?.detail.act, [b.id, a.id])

    const s = await newClient(app, { scopes: ['b:read'], audiences: [A_AUD] })
    const fromService = claimsOf(await exchanged(app, a, await serviceToken(app, s)))
    await app.audit.flush()
    const all = (await admin('GET', '/audit?event=token_exchanged&limit=100')).json().events as Array<{ user_id: number | null, detail: Record<string, unknown> }>
    t.match(all.find((event) => event.detail.jti === fromService.jti), { user_id: null, session_id: null, detail: { subject: s.id, subject_kind: 'service', actor: a.id, act: [a.id], audience: B } })
  })
})

t.test('two verifiers of their own (jose, oauth4webapi\'s RFC 9068 validator) take the exchanged token for its audience from the served JWKS, and refuse it for another', async (t) => {
  const app = await build(t)
  // Closed with the app, by build's teardown.
  await app.listen({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const a = await newClient(app, { scopes: ['b:read', 'c:read'], audiences: [A_AUD], exchangeAudiences: [B, C] })
  const { access, user } = await login(app)
  const forB = await exchanged(app, a, access, { audience: B, scope: 'b:read' })
  const forC = await exchanged(app, a, access, { audience: C, scope: 'c:read' })

  const jwks = createRemoteJWKSet(new URL(`${url}/.well-known/jwks.json`))
  const as: oauth.AuthorizationServer = { issuer: app.config.JWT_ISSUER, jwks_uri: `${url}/.well-known/jwks.json` }
  // A service of `audience`, as each library checks a token.
  const services = (audience: string) => ({
    jose: (token: string) => jwtVerify(token, jwks, { issuer: app.config.JWT_ISSUER, audience, typ: 'at+jwt' }).then(({ payload }) => payload as Record<string, unknown>),
    oauth4webapi: (token: string) => oauth.validateJwtAccessToken(as, new Request(`${url}/resource`, { headers: bearer(token) }), audience, { [oauth.allowInsecureRequests]: true }) as Promise<Record<string, unknown>>
  })
  for (const [audience, mine, theirs, scope] of [[B, forB, forC, 'b:read'], [C, forC, forB, 'c:read']] as const) {
    const { jose, oauth4webapi } = services(audience)
    for (const [name, verify] of [['jose', jose], ['oauth4webapi', oauth4webapi]] as const) {
      const claims = await verify(mine)
      t.match(claims, { iss: app.config.JWT_ISSUER, aud: audience, sub: String(user.id), client_id: a.id, scope, gty: EXCHANGE, user_id: user.id }, `${name}, service ${audience}: its own token`)
      t.same(claims.act, { sub: a.id }, `${name}: act`)
    }
    await t.rejects(jose(theirs), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'aud' }, `jose, service ${audience}: the other service's token`)
    await t.rejects(oauth4webapi(theirs), { code: oauth.JWT_CLAIM_COMPARISON, cause: { claim: 'aud' } }, `oauth4webapi, service ${audience}: the other service's token`)
    await t.rejects(jose(access), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'aud' }, `jose, service ${audience}: the user's own token`)
  }
})

t.test('metadata: both grants and the token types of the exchange', async (t) => {
  const app = await build(t)
  for (const path of ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration']) {
    const metadata = (await app.inject(path)).json()
    t.ok(metadata.grant_types_supported.includes(EXCHANGE), `${path}: token exchange`)
    t.ok(metadata.grant_types_supported.includes(JWT_BEARER), `${path}: the JWT bearer grant`)
    t.same(metadata.token_exchange_subject_token_types_supported, [ACCESS], `${path}: subject token types`)
    t.same(metadata.token_exchange_actor_token_types_supported, [ACCESS], `${path}: actor token types`)
    t.same(metadata.token_exchange_requested_token_types_supported, [ACCESS], `${path}: requested token types`)
  }
})

t.test('two replicas: a client disabled on one, its exchanged tokens are refused on the other once it hears of it', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'notifications are PostgreSQL\'s: checked in the PostgreSQL run'
}, async (t) => {
  const database = await freshDatabase(t)
  // The second replica's client cache on a clock that stands still, its heartbeats good for an
  // hour: what it keeps never ages out, so only the notification can make it refuse.
  const cache = new NotifiedCache<CachedClient>({ now: () => 0, heartbeatTimeoutMs: 3_600_000 })
  const one = await build(t, { database })
  const two = await build(t, { database, overrides: { clientCache: cache } })
  t.ok(await eventually(() => cache.live), 'the second replica\'s listener beats: its cache is in use')
  const a = await newClient(one, { scopes: ['b:read'], audiences: [A_AUD], exchangeAudiences: [B] })
  const token = await exchanged(one, a, (await login(one)).access)
  // A read that a notification of A's creation overtook is rightly not kept: the next read is.
  t.ok(await eventually(async () => (await check(two, token, { audience: B })).statusCode === 204 && Boolean(cache.get(a.id))), 'the second replica takes it, and keeps A')
  await one.clients.disable(a.id)
  t.ok(await eventually(async () => (await check(two, token, { audience: B })).statusCode === 401), 'refused on the second replica')
  await one.clients.enable(a.id)
  t.ok(await eventually(async () => (await check(two, token, { audience: B })).statusCode === 204), 'taken again once enabled')
})

t.test('two policy changes of one client at once: one after the other, neither bringing back what the other changed', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'row locks between connections are PostgreSQL\'s: checked in the PostgreSQL run'
}, async (t) => {
  const database = await freshDatabase(t)
  const app = await build(t, { database })
  const a = await newClient(app, { scopes: ['s1'], audiences: [A_AUD], exchangeAudiences: [B] })
  // Another connection holds the client's row: both updates start and wait on it, then go.
  const blocker = new pg.Client({ connectionString: database.DATABASE_URL })
  await blocker.connect()
  t.teardown(() => blocker.end())
  await blocker.query('begin')
  await blocker.query('select id from oauth_clients where id = $1 for update', [a.id])
  const waiters = await lockWaiters(t, database.DATABASE_URL!)
  const scopes = app.clients.update(a.id, { scopes: ['s1', 's2'] })
  const audiences = app.clients.update(a.id, { exchangeAudiences: [B, C] })
  t.ok(await eventually(async () => (await waiters('%oauth_clients%')).length === 2), 'both wait on the row')
  await blocker.query('commit')
  await Promise.all([scopes, audiences])
  const { client } = await app.clients.show(a.id)
  t.same({ scopes: client.scopes, exchangeAudiences: client.exchangeAudiences }, { scopes: ['s1', 's2'], exchangeAudiences: [B, C] })
})
