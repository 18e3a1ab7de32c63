import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { ALL_ADMIN_SCOPES as ALL_SCOPES, auditEvents, basic, bearer, build, claimsOf, login, operator, postJson, register, TestClock, uniqueUser } from './helper.ts'

// The admin API (issue 17): service clients holding admin scopes, for the admin audience, manage
// users, their sessions and roles, and read the audit trail; every call audited. Both engines.

const INTROSPECTOR = { id: 'gateway', secret: 'introspection-secret-0123456789' }

function api (app: FastifyInstance, token: string) {
  const call = (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: unknown) => app.inject({
    method, url: `/api/admin${url}`, headers: { ...bearer(token), ...(payload === undefined ? {} : { 'content-type': 'application/json' }) }, ...(payload === undefined ? {} : { payload: payload as object })
  })
  return {
    get: (url: string) => call('GET', url),
    post: (url: string, payload: unknown) => call('POST', url, payload),
    put: (url: string, payload: unknown) => call('PUT', url, payload),
    delete: (url: string) => call('DELETE', url)
  }
}

const introspect = async (app: FastifyInstance, token: string) => (await app.inject({
  method: 'POST', url: '/api/token/introspect', payload: `token=${token}`, headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(INTROSPECTOR.id, INTROSPECTOR.secret) }
})).json()

t.test('the admin API', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock, env: { ROLES: 'editor,viewer,billing:admin', INTROSPECTION_CLIENTS: `${INTROSPECTOR.id}:${INTROSPECTOR.secret}` } })
  // A day long: the tests below move the clock by hours.
  const ops = await operator(app, ALL_SCOPES, app.config.adminAudience, 86_400)
  const admin = api(app, ops.token)

  t.test('only a live token of the admin audience with the scope gets in; a user\'s token, or none, finds nothing there', async (t) => {
    const user = await login(app)
    const unknown = await app.inject({ url: '/api/admin/nothing-here', headers: bearer(ops.token) })
    t.equal(unknown.statusCode, 404)
    const other = await operator(app, ALL_SCOPES, 'https://orders.example.test')
    for (const [name, headers] of [['no token', {}], ['a user\'s token', bearer(user.access)], ['a service token for another audience', bearer(other.token)], ['a malformed header', { authorization: 'Bearer junk' }]] as const) {
      const res = await app.inject({ url: '/api/admin/users', headers })
      t.equal(res.statusCode, 404, name)
      t.same(res.json(), { ...unknown.json(), detail: 'No route for GET /api/admin/users.' }, `${name}: the answer to a path that does not exist`)
      t.equal(res.headers['www-authenticate'], undefined, `${name}: no challenge`)
    }
    const reader = await operator(app, ['admin:users:read'])
    t.equal((await api(app, reader.token).get('/users')).statusCode, 200)
    const denied = await api(app, reader.token).post(`/users/${user.user.id}/disable`, { reason: 'x' })
    t.equal(denied.statusCode, 403)
    t.match(denied.json(), { code: 'insufficient_scope', detail: /admin:users:write/ })
    t.match(denied.headers['www-authenticate'], /error="insufficient_scope"/)
    t.equal((await app.inject({ url: `/api/admin/users/${user.user.id}`, headers: bearer(user.access) })).statusCode, 404)
    // A token of the admin audience, once its client is disabled or it expired: the admin API says so.
    const gone = await operator(app, ['admin:users:read'])
    await app.clients.disable(gone.id)
    t.match((await api(app, gone.token).get('/users')).json(), { status: 401, code: 'token_not_valid' })
    clock.advance(601)
    t.match((await api(app, reader.token).get('/users')).json(), { status: 401, code: 'token_expired' })
    clock.advance(-601)
  })

  t.test('GET /users: a prefix of the username or email, or an id, with a status; pages that hold every user once while others register', async (t) => {
    const prefix = `pg${Date.now().toString(36)}`
    const made = []
    for (let i = 0; i < 7; i++) made.push(await register(app, { ...uniqueUser(`${prefix}_${i}`) }))
    const byName = await admin.get(`/users?q=${prefix.toUpperCase()}_3`)
    t.same(byName.json().users.map((u: { id: number }) => u.id), [made[3]!.id], 'a username prefix, whatever its case')
    t.same((await admin.get(`/users?q=${encodeURIComponent(made[5]!.email.slice(0, -4))}`)).json().users.map((u: { id: number }) => u.id), [made[5]!.id], 'an email prefix')
    t.match((await admin.get(`/users?q=${made[1]!.id}`)).json().users, [{ id: made[1]!.id }], 'an id')
    t.same((await admin.get('/users?q=%25')).json().users, [], 'LIKE\'s own characters are themselves')

    // Paging two at a time while more users register between the pages.
    const seen: number[] = []
    let cursor: string | null = null
    let extra = 0
    do {
      const res = await admin.get(`/users?q=${prefix}&limit=2${cursor === null ? '' : `&cursor=${cursor}`}`)
      t.equal(res.statusCode, 200)
      seen.push(...res.json().users.map((u: { id: number }) => u.id))
      cursor = res.json().next_cursor
      if (extra < 3) made.push(await register(app, uniqueUser(`${prefix}_x${extra++}`)))
    } while (cursor !== null)
    t.same(seen, made.map((u) => u.id), 'every user once, in id order, those who registered meanwhile at the end')
    t.match((await admin.get('/users?cursor=bm9wZQ')).json(), { status: 400, code: 'invalid_cursor' })
    t.equal((await admin.get('/users?limit=101')).statusCode, 400)
    t.equal((await admin.get('/users?limit=0')).statusCode, 400)
    t.equal((await admin.get('/users?limit=100')).statusCode, 200)
  })

  t.test('disable ends every session at once: refresh, detail, check, verify, introspection and sign-in refuse; enable lets sign-in back', async (t) => {
    const first = await login(app)
    const user = first.user
    const second = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
    t.match((await admin.get(`/users/${user.id}`)).json(), { id: user.id, status: 'active', active_sessions: 2, last_login_at: String, roles: [] })
    const res = await admin.post(`/users/${user.id}/disable`, { reason: 'account compromised (ticket 42)' })
    t.equal(res.statusCode, 200, res.body)
    t.match(res.json(), { status: 'disabled', disabled_reason: 'account compromised (ticket 42)', disabled_until: null })
    t.equal((await postJson(app, '/api/token/refresh', { refresh: first.refresh })).statusCode, 401, 'refresh')
    t.equal((await postJson(app, '/api/token/refresh', { refresh: second.json().refresh })).statusCode, 401, 'the other session\'s refresh')
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(first.access) })).statusCode, 401, 'detail')
    t.equal((await app.inject({ url: '/api/auth/check', headers: bearer(first.access) })).statusCode, 401, 'check')
    t.equal((await postJson(app, '/api/token/verify', { token: first.access })).statusCode, 401, 'verify')
    t.same(await introspect(app, first.access), { active: false }, 'introspection')
    t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).statusCode, 401, 'sign-in')
    t.match((await admin.get(`/users/${user.id}`)).json(), { active_sessions: 0 })

    t.match((await admin.post(`/users/${user.id}/enable`, { reason: 'password reset by the owner' })).json(), { status: 'active', disabled_reason: null })
    t.equal((await postJson(app, '/api/token/refresh', { refresh: first.refresh })).statusCode, 401, 'the sessions ended stay ended')
    t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).statusCode, 200, 'sign-in works again')
  })

  t.test('a disable until a time: sign-in refused before it, taken back by the first sign-in after', async (t) => {
    const { user } = await login(app)
    const until = new Date(clock.now().getTime() + 3600_000).toISOString()
    t.match((await admin.post(`/users/${user.id}/disable`, { reason: 'cooling off', until })).json(), { status: 'disabled', disabled_until: until })
    t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).statusCode, 401)
    clock.advance(3601)
    t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).statusCode, 200)
    t.match((await admin.get(`/users/${user.id}`)).json(), { status: 'active', disabled_until: null })
    t.match((await admin.post(`/users/${user.id}/disable`, { reason: 'x', until: new Date(clock.now().getTime() - 1000).toISOString() })).json(), { status: 400, errors: [{ field: 'until' }] })
    t.match((await admin.post(`/users/${user.id}/disable`, {})).json(), { status: 400, errors: [{ field: 'reason' }] }, 'a reason is required')
    t.match((await admin.post('/users/999999/disable', { reason: 'x' })).json(), { status: 404, detail: 'No user 999999.' })
    // Past PostgreSQL's integer: still no such user, not a database error.
    t.match((await admin.get('/users/9999999999')).json(), { status: 404, detail: 'No user 9999999999.' })
    t.match((await admin.get('/audit?user_id=9999999999')).json(), { events: [], next_cursor: null })
    t.match((await admin.get('/users?q=9999999999')).json(), { users: [] })
  })

  t.test('soft delete scrubs the user\'s personal data and keeps the audit trail; hard delete removes the row', async (t) => {
    const { user, access } = await login(app)
    const eventsBefore = await auditEvents(app, user.id, ['id'])
    t.ok(eventsBefore.length >= 2, 'register and login are in the trail')
    t.equal((await app.inject({ method: 'POST', url: '/api/auth/mfa/totp', headers: bearer(access) })).statusCode, 201, 'a factor begun')
    await app.oneTimeCodes.issue({ purpose: 'password_reset', userId: user.id, ttlS: 600, with: { code: true } })
    t.equal((await admin.delete(`/users/${user.id}?reason=${encodeURIComponent('GDPR erasure request')}`)).statusCode, 204)
    const row = await app.db.selectFrom('users').selectAll().where('id', '=', user.id).executeTakeFirstOrThrow()
    t.match(row, { username: `deleted:${user.id}`, email: `deleted:${user.id}@deleted.invalid`, password_hash: null, is_active: false, roles: [], deleted_at: Date })
    t.notMatch(JSON.stringify(row), user.username, 'nothing of the name is left in the row')
    t.equal((await app.db.selectFrom('sessions').select('id').where('user_id', '=', user.id).execute()).length, 0, 'the sessions, with their addresses and user agents, are gone')
    for (const table of ['one_time_codes', 'mfa_factors'] as const) {
      t.equal((await app.db.selectFrom(table).select('id').where('user_id', '=', user.id).execute()).length, 0, `its ${table} are gone`)
    }
    const eventsAfter = await auditEvents(app, user.id, ['id'])
    t.ok(eventsAfter.length > eventsBefore.length, 'the trail keeps its rows, and the deletion')
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(access) })).statusCode, 401)
    t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).statusCode, 401)
    t.match((await admin.get(`/users/${user.id}`)).json(), { status: 'deleted' })
    t.match((await admin.post(`/users/${user.id}/enable`, { reason: 'x' })).json(), { status: 409, code: 'user_deleted' })
    t.equal((await postJson(app, '/api/auth/register', { username: user.username, email: user.email, password: user.password })).statusCode, 201, 'the name and address are free again')

    const other = await register(app)
    t.equal((await admin.delete(`/users/${other.id}?mode=hard&reason=test`)).statusCode, 204)
    t.equal(await app.db.selectFrom('users').select('id').where('id', '=', other.id).executeTakeFirst(), undefined)
    t.ok((await auditEvents(app, other.id, ['id'])).length > 0, 'the trail keeps the id')
    t.equal((await admin.delete(`/users/${other.id}?reason=again`)).statusCode, 404)
    t.equal((await admin.delete(`/users/${other.id}`)).statusCode, 400, 'a reason is required')
  })

  t.test('a user\'s sessions: listed, one ended (only theirs), all ended', async (t) => {
    const a = await login(app)
    await postJson(app, '/api/auth/login', { identifier: a.user.username, password: a.user.password })
    const b = await login(app)
    const list = (await admin.get(`/users/${a.user.id}/sessions`)).json().sessions
    t.equal(list.length, 2)
    t.match(list[0], { id: String, created_at: String, ip: String })
    const bSession = String(claimsOf(b.access).sid)
    t.equal((await admin.delete(`/users/${a.user.id}/sessions/${bSession}?reason=x`)).statusCode, 404, 'another user\'s session')
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(b.access) })).statusCode, 200)
    t.equal((await admin.delete(`/users/${a.user.id}/sessions/${String(claimsOf(a.access).sid)}?reason=lost+phone`)).statusCode, 204)
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(a.access) })).statusCode, 401, 'ended at once')
    t.same((await admin.delete(`/users/${a.user.id}/sessions?reason=sign+out+everywhere`)).json(), { ended: 1 })
    t.same((await admin.get(`/users/${a.user.id}/sessions`)).json(), { sessions: [] })
  })

  t.test('roles: of ROLES only; at forward auth and introspection at once, in the tokens from the next refresh', async (t) => {
    const { user, access, refresh } = await login(app)
    t.notOk('roles' in claimsOf(access), 'no roles, no claim')
    const res = await admin.put(`/users/${user.id}/roles`, { roles: ['viewer', 'editor', 'viewer'], reason: 'joined the editors' })
    t.equal(res.statusCode, 200, res.body)
    t.same(res.json().roles, ['editor', 'viewer'], 'once each, sorted')
    t.equal((await app.inject({ url: '/api/auth/check', headers: bearer(access) })).headers['x-auth-roles'], 'editor,viewer', 'check at once')
    t.same((await introspect(app, access)).roles, ['editor', 'viewer'], 'introspection at once')
    t.notOk('roles' in claimsOf(access), 'the access token already issued keeps what it was signed with: its lifetime bounds a JWKS verifier\'s staleness')
    const next = (await postJson(app, '/api/token/refresh', { refresh })).json()
    t.same(claimsOf(next.access).roles, ['editor', 'viewer'], 'the next refresh signs the new roles')
    t.same(claimsOf(next.refresh).roles, ['editor', 'viewer'])
    await admin.put(`/users/${user.id}/roles`, { roles: [], reason: 'left' })
    const after = (await postJson(app, '/api/token/refresh', { refresh: next.refresh })).json()
    t.notOk('roles' in claimsOf(after.access), 'and their removal')
    t.equal((await app.inject({ url: '/api/auth/check', headers: bearer(after.access) })).headers['x-auth-roles'], '')
    const unknown = await admin.put(`/users/${user.id}/roles`, { roles: ['root', 'editor'], reason: 'x' })
    t.match(unknown.json(), { status: 400, errors: [{ field: 'roles', message: /"root" is not one of the configured roles \(ROLES: editor, viewer, billing:admin\)/ }] })
    const fresh = await login(app, user)
    t.notOk('roles' in claimsOf(fresh.access), 'a sign-in signs the roles of the moment')
    await admin.put(`/users/${user.id}/roles`, { roles: ['billing:admin'], reason: 'x' })
    t.same(claimsOf((await login(app, user)).access).roles, ['billing:admin'])
  })

  t.test('every admin call is in the audit trail with the calling client, and the trail reads in keyset pages', async (t) => {
    const { user } = await login(app)
    await admin.get(`/users/${user.id}`)
    await admin.put(`/users/${user.id}/roles`, { roles: ['viewer'], reason: 'audit test' })
    await admin.post(`/users/${user.id}/disable`, { reason: 'audit test' })
    await admin.delete(`/users/${user.id}/sessions?reason=audit+test`)
    await app.audit.flush()
    const trail = (await admin.get(`/audit?user_id=${user.id}`)).json()
    t.same(trail.events.map((e: { event: string }) => e.event), ['user_sessions_ended', 'user_disabled', 'user_roles_changed', 'admin_read', 'login', 'register'], 'newest first')
    for (const event of trail.events.slice(0, 4)) t.match(event.detail, { client_id: ops.id }, `${event.event}: the client`)
    t.match(trail.events[2].detail, { reason: 'audit test', before: [], after: ['viewer'] })
    t.match(trail.events[1].detail, { reason: 'audit test', sessions_ended: 1 })

    // Pages of two, while events keep being written: each event of the trail once.
    const all: string[] = []
    let cursor: string | null = null
    do {
      const page: { events: Array<{ id: string }>, next_cursor: string | null } = (await admin.get(`/audit?user_id=${user.id}&limit=2${cursor === null ? '' : `&cursor=${cursor}`}`)).json()
      all.push(...page.events.map((e) => e.id))
      cursor = page.next_cursor
      await app.audit.flush()
    } while (cursor !== null)
    t.equal(new Set(all).size, all.length, 'no event twice')
    t.ok(all.length >= 6)
    t.match((await admin.get('/audit?event=user_disabled&limit=1')).json(), { events: [{ event: 'user_disabled' }] })
    await app.audit.flush()
    const reads = (await admin.get('/audit?event=admin_read&limit=100')).json().events
    t.ok(reads.some((e: { detail: { what: string } }) => e.detail.what === 'audit'), 'reading the trail is in the trail too')
  })
})

t.test('the metadata lists the admin scopes; the OpenAPI document lists the admin routes', async (t) => {
  const app = await build(t)
  t.match((await app.inject('/.well-known/oauth-authorization-server')).json().scopes_supported, ['introspect', 'introspect:users', 'introspect:all', 'admin:users:read', 'admin:users:write', 'admin:sessions', 'admin:audit:read'])
  const doc = (await app.inject('/docs/json')).json()
  for (const path of ['/api/admin/users', '/api/admin/users/{id}', '/api/admin/users/{id}/disable', '/api/admin/users/{id}/enable', '/api/admin/users/{id}/roles', '/api/admin/users/{id}/sessions', '/api/admin/users/{id}/sessions/{sid}', '/api/admin/audit']) {
    t.ok(doc.paths[path], path)
  }
  t.same(doc.paths['/api/admin/users/{id}/roles'].put.security, [{ adminClient: ['admin:users:write'] }])
})
