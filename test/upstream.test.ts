import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import t from 'tap'
import { auditEvents, bearer, build, claimsOf, eventually, lockWaiters, operator, postJson, register, uniqueUser } from './helper.ts'
import {
  accessOf, accountsWith, atProvider, callback, CLIENT, detailOf, FLOW_COOKIE, fragmentOf, identitiesIn, OTHER_RETURN, person,
  providerEnv, providerFor, PUBLIC_URL, redirectOf, refused, RETURN, sessionsOf, signedIn, signIn, start, verifyAddress
} from './upstream-flow.ts'

// Sign-in with upstream identity providers (issue 28), against a real OpenID Provider (panva's
// oidc-provider, test/oidc-provider.ts) through authgate's routes: each anchor failure of the
// issue as an attack authgate refuses. Both engines.

/** When the identity of `subject` was last used, and when its account last signed in (ms). */
async function usedAt (app: FastifyInstance, subject: string): Promise<{ identity: number, login: number }> {
  const row = await app.db.selectFrom('user_identities').innerJoin('users', 'users.id', 'user_identities.user_id')
    .select(['user_identities.last_used_at', 'users.last_login_at']).where('subject', '=', subject).executeTakeFirstOrThrow()
  return { identity: row.last_used_at!.getTime(), login: row.last_login_at!.getTime() }
}

t.test('which account: an identity is (issuer, subject), never an address', async (t) => {
  // corp: a generic provider trusted for addresses (TRUST_EMAIL=true), no implicit linking;
  // linker: the same, with LINK_BY_EMAIL=true; each its own issuer.
  const corp = await providerFor(t, ['corp'])
  const linker = await providerFor(t, ['linker'])
  const app = await build(t, {
    env: {
      PUBLIC_URL,
      OIDC_PROVIDERS: 'corp,linker',
      OIDC_RETURN_URLS: RETURN,
      ...providerEnv('corp', corp, { TRUST_EMAIL: 'true' }),
      ...providerEnv('linker', linker, { TRUST_EMAIL: 'true', LINK_BY_EMAIL: 'true' })
    }
  })

  t.test('a new identity makes an account; the same one signs it in again, whatever its email claim now says', async (t) => {
    const alice = person('alice')
    corp.accounts.set(alice.sub, alice.claims)
    const access = signedIn(t, await signIn(app, corp, 'corp', alice.sub))
    const user = await detailOf(app, access)
    t.match(user, { email: alice.email, email_verified: true, username: alice.claims.preferred_username })
    t.same(await identitiesIn(app, user.id), [`corp:${alice.sub}`])
    t.match(await auditEvents(app, user.id, ['event', 'outcome', 'detail']), [
      { event: 'register', outcome: 'success', detail: { method: 'upstream', provider: 'corp' } },
      { event: 'identity_linked', outcome: 'success', detail: { provider: 'corp', subject: alice.sub, by: 'account_creation' } },
      { event: 'login', outcome: 'success', detail: { method: 'upstream', provider: 'corp' } }
    ])

    // Anchor: an email claim changed upstream (to an address of nobody's, then to another
    // account's) still signs in the known pair's account, and makes none. A matching by address
    // would make a new account (or sign in the other one).
    const first = await usedAt(app, alice.sub)
    const changed = `changed-${alice.email}`
    corp.accounts.set(alice.sub, { ...alice.claims, email: changed })
    t.equal((await detailOf(app, signedIn(t, await signIn(app, corp, 'corp', alice.sub)))).id, user.id, 'the same account')
    const again = await usedAt(app, alice.sub)
    t.ok(again.identity > first.identity && again.login > first.login, 'a returning sign-in records the identity\'s use and the account\'s last sign-in')
    t.equal(await accountsWith(app, changed), 0, 'no account of the new address')
    const other = await register(app)
    corp.accounts.set(alice.sub, { ...alice.claims, email: other.email })
    t.equal((await detailOf(app, signedIn(t, await signIn(app, corp, 'corp', alice.sub)))).id, user.id, 'not the account of the address it names now')
    const row = await app.db.selectFrom('user_identities').select(['email']).where('subject', '=', alice.sub).executeTakeFirstOrThrow()
    t.equal(row.email, other.email, 'the identity shows the address it names now')
    t.equal((await detailOf(app, signedIn(t, await signIn(app, corp, 'corp', alice.sub)))).email, alice.email, 'the account keeps its own address')
  })

  t.test('a squatter\'s unverified account with the victim\'s address is never linked nor signed into', async (t) => {
    const victim = person('victim')
    // The squatter registers the victim's address with a password of theirs and never verifies it.
    const squatter = await register(app, { ...uniqueUser('squatter'), email: victim.email })
    corp.accounts.set(victim.sub, victim.claims)
    linker.accounts.set(victim.sub, victim.claims)

    // Catches a provider's email_verified taken as proof of the local account (better-auth PR #9578).
    refused(t, await signIn(app, corp, 'corp', victim.sub), 'account_exists')
    // Catches LINK_BY_EMAIL without the local address's own proof (keycloak#53041).
    refused(t, await signIn(app, linker, 'linker', victim.sub), 'account_exists')
    t.same(await identitiesIn(app, squatter.id), [], 'no identity linked to the squatter\'s account')
    t.equal(await sessionsOf(app, squatter.id), 0, 'no session of the squatter\'s account')
    t.equal(await accountsWith(app, victim.email), 1, 'no second account of the address')
    t.same(await auditEvents(app, squatter.id, ['event', 'outcome']), [{ event: 'register', outcome: 'success' }], 'no sign-in or link recorded on the squatter\'s account')
    const failures = await app.db.selectFrom('audit_events').select(['detail']).where('event', '=', 'login').where('outcome', '=', 'failure').where('identifier', '=', victim.email).execute()
    t.match(failures, [{ detail: { method: 'upstream', provider: 'corp', reason: 'account_exists' } }, { detail: { method: 'upstream', provider: 'linker', reason: 'account_exists' } }])
  })

  t.test('LINK_BY_EMAIL links a verified local address to a trusted, asserted one only', async (t) => {
    const owner = await register(app)
    await verifyAddress(app, owner.id)
    const unasserted = { sub: `${owner.username}-unasserted`, claims: { email: owner.email, email_verified: false } }
    linker.accounts.set(unasserted.sub, unasserted.claims)
    // Catches a link on the provider's word alone: it did not assert this address.
    refused(t, await signIn(app, linker, 'linker', unasserted.sub), 'account_exists')
    // Catches a link where the operator did not allow it (corp: LINK_BY_EMAIL off).
    corp.accounts.set(`${owner.username}-corp`, { email: owner.email, email_verified: true })
    refused(t, await signIn(app, corp, 'corp', `${owner.username}-corp`), 'account_exists')
    t.same(await identitiesIn(app, owner.id), [])

    // All three hold: the one allowed case.
    linker.accounts.set(`${owner.username}-ok`, { email: owner.email, email_verified: true })
    const access = signedIn(t, await signIn(app, linker, 'linker', `${owner.username}-ok`))
    t.equal((await detailOf(app, access)).id, owner.id, 'signed into the address\'s account')
    t.same(await identitiesIn(app, owner.id), [`linker:${owner.username}-ok`])
    t.match(await auditEvents(app, owner.id, ['event', 'detail'], { event: 'identity_linked' }), [{ detail: { provider: 'linker', subject: `${owner.username}-ok`, by: 'email' } }])
  })

  t.test('two upstream accounts with one address: the second never gets the first\'s account', async (t) => {
    const first = person('twin')
    const second = { sub: `${first.sub}-2`, claims: { ...first.claims, preferred_username: 'someone-else' } }
    corp.accounts.set(first.sub, first.claims)
    corp.accounts.set(second.sub, second.claims)
    const user = await detailOf(app, signedIn(t, await signIn(app, corp, 'corp', first.sub)))
    // Catches matching by address (better-auth PR #9818: One Tap users matched by email).
    refused(t, await signIn(app, corp, 'corp', second.sub), 'account_exists')
    t.same(await identitiesIn(app, user.id), [`corp:${first.sub}`])
    t.equal(await accountsWith(app, first.email), 1)
  })

  t.test('an identity without an address makes no account', async (t) => {
    corp.accounts.set('no-address', { preferred_username: 'nobody' })
    refused(t, await signIn(app, corp, 'corp', 'no-address'), 'email_required')
  })

  t.test('a disabled account is not signed into; the admin API lists a user\'s identities', async (t) => {
    const carol = person('carol')
    corp.accounts.set(carol.sub, carol.claims)
    const user = await detailOf(app, signedIn(t, await signIn(app, corp, 'corp', carol.sub)))
    const admin = await operator(app)
    const listed = await app.inject({ url: `/api/admin/users/${user.id}/identities`, headers: bearer(admin.token) })
    t.equal(listed.statusCode, 200)
    t.match(listed.json(), { identities: [{ id: String, provider: 'corp', subject: carol.sub, email: carol.email, created_at: String, last_used_at: String }] })
    const reader = await operator(app, ['admin:sessions'])
    t.equal((await app.inject({ url: `/api/admin/users/${user.id}/identities`, headers: bearer(reader.token) })).statusCode, 403, 'admin:users:read is needed')

    t.equal((await postJson(app, `/api/admin/users/${user.id}/disable`, { reason: 'left the company' }, bearer(admin.token))).statusCode, 200)
    const before = await sessionsOf(app, user.id)
    const used = await usedAt(app, carol.sub)
    // Catches a sign-in by a known pair that skips the account's state.
    refused(t, await signIn(app, corp, 'corp', carol.sub), 'invalid_credentials')
    t.equal(await sessionsOf(app, user.id), before, 'no new session')
    t.same(await usedAt(app, carol.sub), used, 'neither the identity\'s use nor a sign-in recorded')
  })

  // Catches a concurrent first sign-in answered account_exists (the other's new account holds the address) or making a second account.
  t.test('two callbacks of two flows of one new identity at once: one account, each signed into it', async (t) => {
    const dana = person('dana')
    corp.accounts.set(dana.sub, dana.claims)
    const flows = await Promise.all([start(app, 'corp'), start(app, 'corp'), start(app, 'corp')])
    const backs = await Promise.all(flows.map(({ begun }) => atProvider(corp, begun!, dana.sub)))
    const answers = await Promise.all(backs.map((back, i) => callback(app, back, flows[i]!.begun!.cookie)))
    t.equal(await accountsWith(app, dana.email), 1, 'one account')
    const users = new Set<number>()
    for (const answer of answers) {
      t.equal(answer.res.statusCode, 302, 'never a 500')
      t.equal(String(answer.location), RETURN, 'signed in, nothing in the fragment')
      const access = accessOf(answer.cookies)
      if (access !== undefined) users.add((await detailOf(app, access)).id)
    }
    t.equal(users.size, 1, 'every sign-in into that one account')
    const id = [...users][0]!
    t.same(await identitiesIn(app, id), [`corp:${dana.sub}`])
  })

  // The window of the test above, made to happen every time (PostgreSQL: PGlite runs one
  // statement at a time): the other sign-in's account and identity commit after this one found
  // no identity and before it looks the address up. This one then finds the address taken, and
  // must see that the identity is known now and sign in, not answer account_exists. To hold it
  // at its lookup of the identity, the test locks a row of that identity, then deletes it: the
  // lookup, let go, finds none (its snapshot is older than the account the test commits with it).
  t.test('a first sign-in whose identity another commits between its two lookups signs into that account', { skip: process.env.DB_ENGINE !== 'postgres' && 'PGlite runs one statement at a time: no window' }, async (t) => {
    const erin = person('erin')
    corp.accounts.set(erin.sub, erin.claims)
    const other = new pg.Client({ connectionString: app.config.DATABASE_URL })
    await other.connect()
    t.teardown(() => other.end())
    const placeholder = uniqueUser('placeholder')
    const held = (await other.query('insert into users (username, email, password_hash) values ($1, $2, null) returning id', [placeholder.username, placeholder.email])).rows[0].id as number
    const identity = 'insert into user_identities (id, user_id, provider, issuer, subject, email, email_verified, created_at) values (gen_random_uuid(), $1, \'corp\', $2, $3, $4, true, now())'
    await other.query(identity, [held, corp.issuer, erin.sub, erin.email])
    const flow = await start(app, 'corp')
    const back = await atProvider(corp, flow.begun!, erin.sub)

    const waiters = await lockWaiters(t, app.config.DATABASE_URL!)
    await other.query('begin')
    await other.query('select id from user_identities where issuer = $1 and subject = $2 for update', [corp.issuer, erin.sub])
    const answer = callback(app, back, flow.begun!.cookie)
    t.ok(await eventually(async () => (await waiters()).length === 1), 'the sign-in waits at its lookup of the identity')
    // The other sign-in: the identity's account made, and the identity linked to it.
    await other.query('delete from user_identities where issuer = $1 and subject = $2', [corp.issuer, erin.sub])
    const userId = (await other.query('insert into users (username, email, password_hash, email_verified_at) values ($1, $2, null, now()) returning id', [erin.claims.preferred_username, erin.email])).rows[0].id as number
    await other.query(identity, [userId, corp.issuer, erin.sub, erin.email])
    await other.query('commit')

    const { location, cookies } = await answer
    t.equal(String(location), RETURN, 'signed in, nothing in the fragment')
    t.equal((await detailOf(app, accessOf(cookies)!)).id, userId, 'into the account the other sign-in made')
    t.equal(await accountsWith(app, erin.email), 1, 'one account')
  })
})

t.test('the browser flow is bound to the browser that started it, once, and returns only to a listed page', async (t) => {
  const op = await providerFor(t, ['corp'])
  const app = await build(t, { env: { PUBLIC_URL, OIDC_PROVIDERS: 'corp', OIDC_RETURN_URLS: `${RETURN},${OTHER_RETURN}`, ...providerEnv('corp', op, { TRUST_EMAIL: 'true' }) } })
  const erin = person('erin')
  op.accounts.set(erin.sub, erin.claims)

  t.test('start: a 302 to the provider with state, nonce and PKCE S256, a host-only flow cookie', async (t) => {
    const { res, begun } = await start(app, 'corp')
    t.equal(res.statusCode, 302)
    const url = new URL(begun!.url)
    t.equal(url.origin, op.url)
    t.match(Object.fromEntries(url.searchParams), { response_type: 'code', client_id: CLIENT.id, redirect_uri: redirectOf('corp'), scope: 'openid email profile', state: /.{22,}/, nonce: /.{22,}/, code_challenge: /^[A-Za-z0-9_-]{43}$/, code_challenge_method: 'S256' })
    const line = ([res.headers['set-cookie']].flat() as string[]).find((l) => l.startsWith(`${FLOW_COOKIE}=`))!
    t.match(line, /; Max-Age=600/)
    t.match(line, /; Path=\//)
    t.match(line, /; HttpOnly/)
    t.match(line, /; Secure/)
    t.match(line, /; SameSite=Lax/)
    t.notMatch(line, /Domain=/i, 'host-only')
    t.equal(res.headers['cache-control'], 'no-store')
  })

  t.test('a return_to not in OIDC_RETURN_URLS is a 400 at start: no redirect, no flow', async (t) => {
    // Catches a prefix, pattern or parsed-URL comparison: each of these would pass one of them.
    for (const returnTo of [
      'https://evil.example/signed-in',
      `${RETURN}.evil.com`,
      `${RETURN}/extra`,
      `${RETURN}?next=https://evil.example`,
      `${RETURN}#x`,
      `${RETURN}x`,
      `${RETURN}/`,
      'http://localhost:5173/signed-in@evil.example',
      'HTTP://localhost:5173/signed-in',
      'http://localhost:5173/SIGNED-IN',
      'http://localhost:5173//signed-in',
      'http://localhost:5173/x/../signed-in',
      '//localhost:5173/signed-in',
      '/signed-in'
    ]) {
      const { res, begun } = await start(app, 'corp', returnTo)
      t.equal(res.statusCode, 400, returnTo)
      t.match(res.json(), { code: 'return_to_not_allowed' }, returnTo)
      t.equal(res.headers.location, undefined, `${returnTo}: no Location`)
      t.equal(begun, undefined, `${returnTo}: no flow cookie`)
    }
    t.equal((await app.inject({ url: '/api/auth/oidc/corp/start' })).statusCode, 400, 'no return_to')
    const unknown = await app.inject({ url: `/api/auth/oidc/nope/start?return_to=${encodeURIComponent(RETURN)}` })
    t.equal(unknown.statusCode, 404, 'a provider not configured')
    t.equal(unknown.headers.location, undefined)
    // The other listed page is a page of its own.
    t.equal((await start(app, 'corp', OTHER_RETURN)).res.statusCode, 302)
  })

  t.test('a callback replayed (the same URL and cookie again) is refused: 400 flow_invalid, no redirect', async (t) => {
    const { begun } = await start(app, 'corp')
    const back = await atProvider(op, begun!, erin.sub)
    signedIn(t, await callback(app, back, begun!.cookie))
    const again = await callback(app, back, begun!.cookie)
    // Catches a flow that is not spent at its first use.
    t.equal(again.res.statusCode, 400)
    t.match(again.res.json(), { status: 400, code: 'flow_invalid' })
    t.equal(again.res.headers['content-type'], 'application/problem+json; charset=utf-8')
    t.equal(again.location, undefined, 'no redirect: no page is trusted to be sent to')
    t.notOk(accessOf(again.cookies))
    t.equal(again.cookies.get(FLOW_COOKIE), '', 'the flow cookie cleared')
  })

  t.test('a callback finished in another browser is refused: no cookie, or another flow\'s', async (t) => {
    const victim = person('victim')
    op.accounts.set(victim.sub, victim.claims)
    // The attacker starts a flow and has the victim finish it at the provider (login CSRF).
    const { begun: attackers } = await start(app, 'corp')
    const back = await atProvider(op, attackers!, victim.sub)
    // Catches a callback that trusts the state alone, with no binding to the browser.
    const bare = await callback(app, back, undefined)
    t.equal(bare.res.statusCode, 400)
    t.match(bare.res.json(), { code: 'flow_invalid' })
    t.equal(bare.location, undefined)
    t.notOk(accessOf(bare.cookies))
    t.match((await callback(app, back, `${FLOW_COOKIE}=not-a-flow`)).res.json(), { status: 400, code: 'flow_invalid' }, 'an unknown flow secret')
    // The victim's browser has a flow of its own: its state is not this callback's.
    const { begun: victims } = await start(app, 'corp')
    refused(t, await callback(app, back, victims!.cookie), 'flow_invalid')
    t.equal(await accountsWith(app, victim.email), 0, 'no account made')
    // The victim's own flow was spent by that try: it does not finish either.
    t.match((await callback(app, await atProvider(op, victims!, victim.sub), victims!.cookie)).res.json(), { code: 'flow_invalid' })
  })

  t.test('a callback whose state was tampered with, or of another provider\'s flow, is refused', async (t) => {
    const { begun } = await start(app, 'corp')
    const back = await atProvider(op, begun!, erin.sub)
    const tampered = new URL(back)
    // Its last character changed (to another one, always: an 'A' becomes a 'B').
    const state = back.searchParams.get('state')!
    tampered.searchParams.set('state', `${state.slice(0, -1)}${state.endsWith('A') ? 'B' : 'A'}`)
    // Catches a state not compared with the flow's.
    refused(t, await callback(app, tampered, begun!.cookie), 'flow_invalid')

    const { begun: second } = await start(app, 'corp')
    const wrongIss = new URL(await atProvider(op, second!, erin.sub))
    wrongIss.searchParams.set('iss', 'http://127.0.0.1:1')
    // Catches a callback that skips RFC 9207's iss (a mix-up attack's answer from another provider).
    refused(t, await callback(app, wrongIss, second!.cookie), 'upstream_error')

    const { begun: third } = await start(app, 'corp')
    const denied = new URL(redirectOf('corp'))
    denied.search = new URLSearchParams({ error: 'access_denied', state: new URL(third!.url).searchParams.get('state')!, iss: op.issuer }).toString()
    refused(t, await callback(app, denied, third!.cookie), 'access_denied')

    // A corp flow's cookie at another provider's callback path: 404 (no such provider) or refused.
    const { begun: fourth } = await start(app, 'corp')
    const elsewhere = new URL(await atProvider(op, fourth!, erin.sub))
    elsewhere.pathname = '/api/auth/oidc/nope/callback'
    const answer = await callback(app, elsewhere, fourth!.cookie)
    t.not(answer.res.statusCode, 200)
    t.notOk(accessOf(answer.cookies))
  })

  t.test('a callback sent back to the flow\'s own return_to, never another listed one', async (t) => {
    const answer = await signIn(app, op, 'corp', erin.sub, OTHER_RETURN)
    signedIn(t, answer, OTHER_RETURN)
  })
})

t.test('the microsoft preset: Entra\'s multi-tenant issuer, tenants allowed, xms_edov', async (t) => {
  const TENANT = '72f988bf-86f1-41af-91ab-2d7cd011db47'
  const OTHER_TENANT = '9188040d-6c67-4c5b-b112-36a304b66dad'
  const ALLOWED_ELSEWHERE = '00000000-0000-4000-8000-000000000001'
  // One Entra-like provider whose tenant is TENANT; its /common/v2.0 document names the template issuer.
  const op = await providerFor(t, ['microsoft', 'entra'], {
    template: { email: 'template@contoso.test', email_verified: true, tid: TENANT, xms_edov: true }
  }, TENANT)
  const common = `${op.url}/common/v2.0`
  const app = await build(t, {
    env: {
      PUBLIC_URL,
      OIDC_PROVIDERS: 'microsoft,entra',
      OIDC_RETURN_URLS: RETURN,
      ...providerEnv('microsoft', op, { ISSUER: common, TENANTS: `${TENANT},${OTHER_TENANT}` }),
      // The same directory, configured for another tenant only.
      ...providerEnv('entra', op, { PRESET: 'microsoft', ISSUER: common, TENANTS: ALLOWED_ELSEWHERE })
    }
  })

  t.test('an address without xms_edov is not trusted, whatever email_verified says; with it, it is', async (t) => {
    const plain = person('nauth', { tid: TENANT, email_verified: true })
    op.accounts.set(plain.sub, plain.claims)
    const user = await detailOf(app, signedIn(t, await signIn(app, op, 'microsoft', plain.sub)))
    // Catches nOAuth: Entra's email_verified (or the email alone) taken as proof.
    t.match(user, { email: plain.email, email_verified: false })
    const row = await app.db.selectFrom('user_identities').select(['issuer', 'email_verified']).where('subject', '=', plain.sub).executeTakeFirstOrThrow()
    t.same(row, { issuer: op.issuer, email_verified: false }, 'the identity is the tenant\'s issuer\'s')

    const owned = person('edov', { tid: TENANT, xms_edov: true })
    op.accounts.set(owned.sub, owned.claims)
    t.match(await detailOf(app, signedIn(t, await signIn(app, op, 'microsoft', owned.sub))), { email: owned.email, email_verified: true })
    const edovFalse = person('edovfalse', { tid: TENANT, xms_edov: false })
    op.accounts.set(edovFalse.sub, edovFalse.claims)
    t.match(await detailOf(app, signedIn(t, await signIn(app, op, 'microsoft', edovFalse.sub))), { email_verified: false }, 'xms_edov false')
  })

  t.test('a tenant not in TENANTS is not_allowed', async (t) => {
    const outsider = person('outsider', { tid: TENANT, xms_edov: true })
    op.accounts.set(outsider.sub, outsider.claims)
    // Catches TENANTS unchecked: the token is otherwise valid.
    refused(t, await signIn(app, op, 'entra', outsider.sub), 'not_allowed')
    t.equal(await accountsWith(app, outsider.email), 0)
  })

  t.test('a tid that disagrees with the issuer of the token is refused', async (t) => {
    // The token is issued by TENANT's issuer but names OTHER_TENANT (allowed) as its tid.
    const liar = person('liar', { tid: OTHER_TENANT, xms_edov: true })
    op.accounts.set(liar.sub, liar.claims)
    // Catches an issuer check that accepts any tenant's issuer, or the template itself.
    const answer = await signIn(app, op, 'microsoft', liar.sub)
    t.equal(answer.res.statusCode, 302)
    t.notOk(accessOf(answer.cookies))
    t.match(fragmentOf(answer.location).get('error'), /^(upstream_error|id_token_invalid)$/)
    t.equal(await accountsWith(app, liar.email), 0)
    // A token with no tid at all.
    const none = person('notid')
    op.accounts.set(none.sub, none.claims)
    const answer2 = await signIn(app, op, 'microsoft', none.sub)
    t.notOk(accessOf(answer2.cookies))
    t.match(fragmentOf(answer2.location).get('error'), /^(upstream_error|id_token_invalid)$/)
  })
})

t.test('the google preset: ALLOWED_DOMAINS checks the Workspace hd claim', async (t) => {
  const op = await providerFor(t, ['google'])
  const app = await build(t, { env: { PUBLIC_URL, OIDC_PROVIDERS: 'google', OIDC_RETURN_URLS: RETURN, ...providerEnv('google', op, { ALLOWED_DOMAINS: 'corp.test' }) } })
  t.equal((await start(app, 'google')).begun!.url.includes('hd=corp.test'), true, 'the one domain asked for at the provider')
  const staff = person('staff', { email: 'staff@corp.test', hd: 'corp.test' })
  op.accounts.set(staff.sub, staff.claims)
  t.match(await detailOf(app, signedIn(t, await signIn(app, op, 'google', staff.sub))), { email: 'staff@corp.test', email_verified: true })

  op.accounts.set('other-hd', { email: 'someone@other.test', email_verified: true, hd: 'other.test' })
  refused(t, await signIn(app, op, 'google', 'other-hd'), 'not_allowed')
  // Catches a check of the address's domain instead of hd: a personal account may carry any address.
  op.accounts.set('no-hd', { email: 'personal@corp.test', email_verified: true })
  refused(t, await signIn(app, op, 'google', 'no-hd'), 'not_allowed')
  t.equal(await accountsWith(app, 'personal@corp.test'), 0)
})

t.test('a generic provider\'s ALLOWED_DOMAINS checks the verified address\'s domain', async (t) => {
  const op = await providerFor(t, ['corp'])
  const app = await build(t, { env: { PUBLIC_URL, OIDC_PROVIDERS: 'corp', OIDC_RETURN_URLS: RETURN, ...providerEnv('corp', op, { TRUST_EMAIL: 'true', ALLOWED_DOMAINS: 'corp.test' }) } })
  op.accounts.set('in', { email: 'in@corp.test', email_verified: true })
  op.accounts.set('unverified', { email: 'unverified@corp.test', email_verified: false })
  op.accounts.set('out', { email: 'out@else.test', email_verified: true })
  signedIn(t, await signIn(app, op, 'corp', 'in'))
  // Catches a domain judged on an address the provider did not vouch for.
  refused(t, await signIn(app, op, 'corp', 'unverified'), 'not_allowed')
  refused(t, await signIn(app, op, 'corp', 'out'), 'not_allowed')
})

t.test('assurance: aal1 and amr fed, unless TRUST_ASSURANCE and the provider said mfa', async (t) => {
  const accounts = { 'strong-sub': { email: 'strong@example.com', email_verified: true, amr: ['mfa', 'pwd', 'otp'] } }
  const plainOp = await providerFor(t, ['corp'], { 'strong-sub': { ...accounts['strong-sub'], email: 'strong@corp.example.com' } })
  const assuredOp = await providerFor(t, ['assured'], accounts)
  const app = await build(t, {
    env: {
      PUBLIC_URL,
      OIDC_PROVIDERS: 'corp,assured',
      OIDC_RETURN_URLS: RETURN,
      ...providerEnv('corp', plainOp, { TRUST_EMAIL: 'true' }),
      ...providerEnv('assured', assuredOp, { TRUST_EMAIL: 'true', TRUST_ASSURANCE: 'true' })
    }
  })
  const check = (token: string, query = '') => app.inject({ url: `/api/auth/check${query}`, headers: bearer(token) })

  t.test('one factor by default: aal1, amr fed, and a gateway asking aal2 refuses it', async (t) => {
    const plain = signedIn(t, await signIn(app, plainOp, 'corp', 'strong-sub'))
    t.match(claimsOf(plain), { aal: 'aal1', amr: ['fed'] })
    t.match((await check(plain, '?aal=aal2')).json(), { status: 403, code: 'aal2_required' })
    t.equal((await check(plain)).headers['x-auth-amr'], 'fed')
    assuredOp.accounts.set('weak-sub', { email: 'weak@example.com', email_verified: true })
    t.match(claimsOf(signedIn(t, await signIn(app, assuredOp, 'assured', 'weak-sub'))), { aal: 'aal1', amr: ['fed'] }, 'a trusted provider\'s sign-in that says no mfa')
  })

  // oidc-provider takes amr and acr from the login's result: test/oidc-provider.ts gives the account's.
  t.test('TRUST_ASSURANCE and the provider\'s amr mfa: aal2, which /api/auth/check?aal=aal2 accepts', async (t) => {
    // Catches a provider's amr believed without TRUST_ASSURANCE.
    t.match(claimsOf(signedIn(t, await signIn(app, plainOp, 'corp', 'strong-sub'))), { aal: 'aal1', amr: ['fed'] })
    const strong = signedIn(t, await signIn(app, assuredOp, 'assured', 'strong-sub'))
    t.match(claimsOf(strong), { aal: 'aal2', amr: ['fed', 'mfa'] })
    const checked = await check(strong, '?aal=aal2')
    t.equal(checked.statusCode, 204)
    t.equal(checked.headers['x-auth-aal'], 'aal2')
  })
})

t.test('the id-token endpoint: a native app\'s ID token, checked as the callback\'s', async (t) => {
  const op = await providerFor(t, ['corp'])
  const app = await build(t, { env: { PUBLIC_URL, OIDC_PROVIDERS: 'corp', OIDC_RETURN_URLS: RETURN, ...providerEnv('corp', op, { TRUST_EMAIL: 'true', EXTRA_AUDIENCES: 'mobile-app' }) } })
  const frank = person('frank')
  op.accounts.set(frank.sub, frank.claims)
  const post = (body: Record<string, unknown>, name = 'corp') => postJson(app, `/api/auth/oidc/${name}/id-token`, body)

  const idToken = await op.idTokenFor(frank.sub, { clientId: CLIENT.id, nonce: 'n-0123456789' })
  const res = await post({ id_token: idToken, nonce: 'n-0123456789' })
  t.equal(res.statusCode, 200)
  t.same(Object.keys(res.json()).sort(), ['access', 'refresh'], 'a pair, as /api/auth/login answers')
  t.match(claimsOf(res.json().access), { aal: 'aal1', amr: ['fed'] })
  t.match(String(res.headers['set-cookie']), /__Host-access_token=/, 'and the cookies, as login sets them')
  const user = await detailOf(app, res.json().access)
  t.match(user, { email: frank.email, email_verified: true })

  // The same token again (no nonce given: not checked) signs in the same account.
  t.equal((await detailOf(app, (await post({ id_token: idToken })).json().access)).id, user.id)
  // Catches a nonce not compared.
  t.match((await post({ id_token: idToken, nonce: 'another-nonce' })).json(), { status: 401, code: 'id_token_invalid' })

  // Catches an audience not checked: a token another client of the provider got.
  const strangers = await op.idTokenFor(frank.sub, { clientId: 'stranger-app' })
  t.match((await post({ id_token: strangers })).json(), { status: 401, code: 'id_token_invalid' })
  const mobile = await op.idTokenFor(frank.sub, { clientId: 'mobile-app' })
  const viaMobile = await post({ id_token: mobile })
  t.equal(viaMobile.statusCode, 200, 'an EXTRA_AUDIENCES client\'s token')
  t.equal((await detailOf(app, viaMobile.json().access)).id, user.id)

  // Catches a signature not checked: one byte of it changed.
  const [header, payload, signature] = idToken.split('.') as [string, string, string]
  const bytes = Buffer.from(signature, 'base64url')
  bytes[10] = bytes[10]! ^ 0x01
  t.match((await post({ id_token: `${header}.${payload}.${bytes.toString('base64url')}` })).json(), { status: 401, code: 'id_token_invalid' })
  // Claims changed under the original signature.
  const forged = Buffer.from(JSON.stringify({ ...claimsOf(idToken), sub: 'someone-else' })).toString('base64url')
  t.match((await post({ id_token: `${header}.${forged}.${signature}` })).json(), { status: 401, code: 'id_token_invalid' })
  // alg none.
  const none = Buffer.from(JSON.stringify({ alg: 'none' })).toString('base64url')
  t.match((await post({ id_token: `${none}.${payload}.` })).json(), { status: 401, code: 'id_token_invalid' })
  t.match((await post({ id_token: 'not-a-jwt' })).json(), { status: 401, code: 'id_token_invalid' })

  // Expired: the provider's tokens live an hour; two hours on by the clock jose reads (a new
  // Date()), for this one request.
  const RealDate = Date
  class Later extends RealDate {
    constructor (...args: ConstructorParameters<typeof Date> | []) {
      if (args.length === 0) super(RealDate.now() + 2 * 3600_000)
      else super(...(args as ConstructorParameters<typeof Date>))
    }
  }
  globalThis.Date = Later as DateConstructor
  let expired
  try {
    expired = await post({ id_token: idToken })
  } finally {
    globalThis.Date = RealDate
  }
  // Catches exp unchecked.
  t.match(expired.json(), { status: 401, code: 'id_token_invalid' }, 'an expired token')
  t.equal((await post({ id_token: idToken })).statusCode, 200, 'the same token, unexpired: the refusal was its age')

  t.match((await post({ id_token: idToken }, 'nope')).json(), { status: 404 }, 'a provider not configured')
  t.equal((await post({ id_token: idToken, extra: 1 })).statusCode, 400, 'no other field')
})

t.test('EMAIL_VERIFICATION=required: an upstream account whose address is not proven does not sign in', async (t) => {
  const op = await providerFor(t, ['corp', 'trusted'])
  const trustedOp = await providerFor(t, ['trusted'])
  const app = await build(t, {
    env: {
      PUBLIC_URL,
      OIDC_PROVIDERS: 'corp,trusted',
      OIDC_RETURN_URLS: RETURN,
      EMAIL_VERIFICATION: 'required',
      APP_VERIFY_URL: 'http://localhost:5173/verify',
      ...providerEnv('corp', op),
      ...providerEnv('trusted', trustedOp, { TRUST_EMAIL: 'true' })
    }
  })
  const gina = person('gina')
  op.accounts.set(gina.sub, gina.claims)
  // corp is not trusted for addresses (generic, TRUST_EMAIL unset): its email_verified proves nothing.
  refused(t, await signIn(app, op, 'corp', gina.sub), 'email_not_verified')
  const hal = person('hal')
  trustedOp.accounts.set(hal.sub, hal.claims)
  signedIn(t, await signIn(app, trustedOp, 'trusted', hal.sub))
})

t.test('without OIDC_PROVIDERS the routes answer 404, naming the setting', async (t) => {
  const app = await build(t)
  for (const [method, url] of [['GET', `/api/auth/oidc/corp/start?return_to=${encodeURIComponent(RETURN)}`], ['POST', '/api/auth/oidc/corp/id-token'], ['GET', '/api/auth/identities']] as const) {
    const res = await app.inject({ method, url, ...(method === 'POST' ? { payload: { id_token: 'x' } } : {}) })
    t.equal(res.statusCode, 404, url)
    t.match(res.body, /OIDC_PROVIDERS/, `${url}: the answer names the setting`)
  }
})
