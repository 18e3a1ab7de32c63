import type { FastifyInstance } from 'fastify'
import { generateSync } from 'otplib'
import t from 'tap'
import { auditEvents, bearer, build, claimsOf, login, postJson, TestClock } from './helper.ts'
import { codeOf, startInbox } from './smtp.ts'
import {
  accessOf, accountsWith, atProvider, callback, detailOf, fragmentOf, identitiesIn, person, providerEnv, providerFor,
  PUBLIC_URL, refused, RETURN, signedIn, signIn, start, type Begun
} from './upstream-flow.ts'

// Linking and unlinking upstream identities from a signed-in session, the second factor after
// an upstream sign-in, and the first proof of an address removing identities that did not prove
// it (issue 28), through authgate's routes against a real OpenID Provider. Both engines.

/** POST /api/auth/identities/link with `access`: its answer, and the flow it began (the URL to open and the flow cookie). */
async function startLink (app: FastifyInstance, access: string, provider: string, returnTo = RETURN) {
  const res = await postJson(app, '/api/auth/identities/link', { provider, return_to: returnTo }, bearer(access))
  const header = res.headers['set-cookie']
  const line = [header ?? []].flat().find((l) => l.startsWith('__Host-upstream_flow='))
  const begun: Begun | undefined = res.statusCode === 200 && line !== undefined ? { url: res.json().url, cookie: line.split(';')[0]! } : undefined
  return { res, begun }
}

/** The identities GET /api/auth/identities lists for `access`. */
async function listed (app: FastifyInstance, access: string): Promise<Array<{ id: string, provider: string, subject: string, email: string | null }>> {
  const res = await app.inject({ url: '/api/auth/identities', headers: bearer(access) })
  if (res.statusCode !== 200) throw new Error(`identities: ${res.statusCode} ${res.body}`)
  return res.json().identities
}

const unlink = (app: FastifyInstance, access: string, id: string) => app.inject({ method: 'DELETE', url: `/api/auth/identities/${id}`, headers: bearer(access) })

t.test('linking and unlinking from a signed-in session', async (t) => {
  const inbox = await startInbox(t)
  const clock = new TestClock()
  const corp = await providerFor(t, ['corp'])
  const other = await providerFor(t, ['other'])
  const app = await build(t, {
    clock,
    env: {
      PUBLIC_URL,
      SMTP_URL: inbox.url,
      OIDC_PROVIDERS: 'corp,other',
      OIDC_RETURN_URLS: RETURN,
      ...providerEnv('corp', corp, { TRUST_EMAIL: 'true' }),
      ...providerEnv('other', other, { TRUST_EMAIL: 'true' })
    }
  })

  t.test('a password user links an identity: listed, mailed, audited; it then signs in that user', async (t) => {
    const { access, user } = await login(app)
    const upstream = person('link')
    corp.accounts.set(upstream.sub, upstream.claims)
    const { res, begun } = await startLink(app, access, 'corp')
    t.equal(res.statusCode, 200)
    t.equal(new URL(res.json().url).origin, corp.url)
    t.equal(res.headers['cache-control'], 'no-store')
    const answer = await callback(app, await atProvider(corp, begun!, upstream.sub), begun!.cookie)
    t.equal(answer.res.statusCode, 302)
    t.equal(answer.location?.href, `${RETURN}#linked=corp`)
    t.notOk(accessOf(answer.cookies), 'a link signs no one in: the session is already there')
    t.match(await listed(app, access), [{ id: String, provider: 'corp', subject: upstream.sub, email: upstream.email }])
    t.match(await auditEvents(app, user.id, ['event', 'session_id', 'detail'], { event: 'identity_linked' }), [{ session_id: claimsOf(access).sid, detail: { provider: 'corp', subject: upstream.sub, by: 'session' } }])
    t.match((await inbox.find(user.email, /was linked to it/)).subject, 'The ways into your account changed')
    t.equal(await accountsWith(app, upstream.email), 0, 'no account of the upstream address')
    // The linked identity now signs in the password user.
    t.equal((await detailOf(app, signedIn(t, await signIn(app, corp, 'corp', upstream.sub)))).id, user.id)
  })

  t.test('a link of an upstream account already linked to another user is refused: identity_taken', async (t) => {
    const taken = person('taken')
    corp.accounts.set(taken.sub, taken.claims)
    const owner = await detailOf(app, signedIn(t, await signIn(app, corp, 'corp', taken.sub)))
    const { access, user } = await login(app)
    const { begun } = await startLink(app, access, 'corp')
    // Catches a link that moves a known pair to whoever asks.
    refused(t, await callback(app, await atProvider(corp, begun!, taken.sub), begun!.cookie), 'identity_taken')
    t.same(await identitiesIn(app, owner.id), [`corp:${taken.sub}`])
    t.same(await identitiesIn(app, user.id), [])
  })

  t.test('a link whose session signed out before the callback is refused: session_ended', async (t) => {
    const { access, user } = await login(app)
    const ended = person('ended')
    corp.accounts.set(ended.sub, ended.claims)
    const { begun } = await startLink(app, access, 'corp')
    t.equal((await postJson(app, '/api/auth/logout', {}, bearer(access))).statusCode, 204)
    // Catches a link bound to the user only: the session that asked for it is over.
    refused(t, await callback(app, await atProvider(corp, begun!, ended.sub), begun!.cookie), 'session_ended')
    t.same(await identitiesIn(app, user.id), [])
    t.equal(await accountsWith(app, ended.email), 0, 'and no account made instead')
  })

  t.test('a link started in one browser cannot be finished with another person\'s upstream account', async (t) => {
    // The attacker starts a link in their session and has the victim sign in at the provider
    // with that URL: the victim's browser has no flow cookie of it, or one of its own flow.
    const attacker = await login(app)
    const victim = person('linkvictim')
    corp.accounts.set(victim.sub, victim.claims)
    const { begun } = await startLink(app, attacker.access, 'corp')
    const back = await atProvider(corp, begun!, victim.sub)
    // Catches a link bound to the state alone.
    const bare = await callback(app, back, undefined)
    t.equal(bare.res.statusCode, 400)
    t.match(bare.res.json(), { code: 'flow_invalid' })
    const { begun: victims } = await start(app, 'corp')
    refused(t, await callback(app, back, victims!.cookie), 'flow_invalid')
    t.same(await identitiesIn(app, attacker.user.id), [], 'the victim\'s identity is not the attacker\'s')
    // A cookie that is not the flow's secret, however close.
    t.match((await callback(app, back, `${begun!.cookie}x`)).res.json(), { status: 400, code: 'flow_invalid' })
  })

  t.test('linking takes a JSON POST, a listed return_to and a recent sign-in', async (t) => {
    const { access, refresh } = await login(app)
    t.match((await startLink(app, access, 'corp', 'https://evil.example/')).res.json(), { status: 400, code: 'return_to_not_allowed' })
    t.equal((await startLink(app, access, 'nope')).res.statusCode, 404, 'a provider not configured')
    const form = await app.inject({ method: 'POST', url: '/api/auth/identities/link', payload: `provider=corp&return_to=${encodeURIComponent(RETURN)}`, headers: { ...bearer(access), 'content-type': 'application/x-www-form-urlencoded' } })
    t.equal(form.statusCode, 415, 'no cross-site form can start it')
    t.equal((await postJson(app, '/api/auth/identities/link', { provider: 'corp', return_to: RETURN })).statusCode, 401, 'signed in only')
    // A refresh keeps the sign-in's auth_time: 11 minutes on, the session is not recent.
    clock.advance(11 * 60)
    const refreshed = (await postJson(app, '/api/token/refresh', { refresh })).json()
    const stale = await startLink(app, refreshed.access, 'corp')
    // Catches a stolen (or long-lived) session adding a way in of the thief's.
    t.match(stale.res.json(), { status: 403, code: 'reauthentication_required' })
    t.equal(stale.begun, undefined, 'no flow')
  })

  t.test('unlinking: never the last way in, never another user\'s', async (t) => {
    // A password-less account, made by an upstream sign-in: its one identity is its only way in.
    const solo = person('solo')
    corp.accounts.set(solo.sub, solo.claims)
    const soloAccess = signedIn(t, await signIn(app, corp, 'corp', solo.sub))
    const [soloIdentity] = await listed(app, soloAccess)
    // Catches an unlink that locks the user out (no password, no mailed sign-in, no reset).
    t.match((await unlink(app, soloAccess, soloIdentity!.id)).json(), { status: 409, code: 'last_way_in' })
    t.equal((await listed(app, soloAccess)).length, 1)

    // A second identity: either may go, then not the last.
    other.accounts.set(solo.sub, { ...solo.claims, email: `other-${solo.email}` })
    const { begun } = await startLink(app, soloAccess, 'other')
    t.equal((await callback(app, await atProvider(other, begun!, solo.sub), begun!.cookie)).location?.href, `${RETURN}#linked=other`)
    const soloUser = await detailOf(app, soloAccess)
    t.equal((await unlink(app, soloAccess, soloIdentity!.id)).statusCode, 204)
    t.match(await listed(app, soloAccess), [{ provider: 'other' }])
    t.match(await auditEvents(app, soloUser.id, ['event', 'detail'], { event: 'identity_unlinked' }), [{ detail: { provider: 'corp', identity: soloIdentity!.id } }])
    t.ok(await inbox.find(soloUser.email, /sign-in with corp was removed from it/))
    refused(t, await signIn(app, corp, 'corp', solo.sub), 'account_exists')

    // A password user's identity goes; another user's is not found.
    const { access, user } = await login(app)
    const linked = person('pw')
    corp.accounts.set(linked.sub, { ...linked.claims, email: `pw-${user.email}` })
    const flow = await startLink(app, access, 'corp')
    await callback(app, await atProvider(corp, flow.begun!, linked.sub), flow.begun!.cookie)
    const [identity] = await listed(app, access)
    // Catches an unlink that does not check the identity's user.
    t.match((await unlink(app, soloAccess, identity!.id)).json(), { status: 404 })
    t.equal((await listed(app, access)).length, 1)
    t.equal((await unlink(app, access, identity!.id)).statusCode, 204)
    t.same(await listed(app, access), [])
    t.equal((await unlink(app, access, identity!.id)).statusCode, 404, 'gone')
    t.ok(await inbox.find(user.email, /sign-in with corp \(pw-/))
    t.equal((await unlink(app, access, 'not-a-uuid')).statusCode, 400)
  })
})

t.test('a user with a second factor signing in upstream gets the second step, and no cookie before it', async (t) => {
  const clock = new TestClock()
  const corp = await providerFor(t, ['corp'])
  const app = await build(t, { clock, env: { PUBLIC_URL, OIDC_PROVIDERS: 'corp', OIDC_RETURN_URLS: RETURN, ...providerEnv('corp', corp, { TRUST_EMAIL: 'true' }) } })
  const totp = (secret: string): string => generateSync({ secret, epoch: Math.floor(clock.now().getTime() / 1000) })

  const ivy = person('ivy')
  corp.accounts.set(ivy.sub, ivy.claims)
  const access = signedIn(t, await signIn(app, corp, 'corp', ivy.sub))
  const added = (await postJson(app, '/api/auth/mfa/totp', {}, bearer(access))).json()
  t.equal((await postJson(app, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: totp(added.secret) }, bearer(access))).statusCode, 200)
  clock.advance(30)

  const answer = await signIn(app, corp, 'corp', ivy.sub)
  t.equal(answer.res.statusCode, 302)
  t.equal(answer.location!.origin + answer.location!.pathname, RETURN)
  const fragment = fragmentOf(answer.location)
  t.match(Object.fromEntries(fragment), { mfa_token: /^[A-Za-z0-9_-]{43}$/, methods: 'totp,recovery_code' })
  // Catches an upstream sign-in that skips the local second factor.
  t.notOk(accessOf(answer.cookies), 'no access cookie')
  t.notOk(answer.cookies.get('__Secure-refresh_token'), 'no refresh cookie')
  t.equal(answer.location!.search, '', 'the token in the fragment, never the query')

  const second = await postJson(app, '/api/auth/mfa/verify', { mfa_token: fragment.get('mfa_token'), method: 'totp', code: totp(added.secret) })
  t.equal(second.statusCode, 200)
  t.match(claimsOf(second.json().access), { aal: 'aal2', amr: ['fed', 'otp', 'mfa'] })
  t.equal((await detailOf(app, second.json().access)).email, ivy.email)

  // The id-token endpoint answers the same: mfa_required.
  const idToken = await corp.idTokenFor(ivy.sub, { clientId: 'authgate' })
  const native = await postJson(app, '/api/auth/oidc/corp/id-token', { id_token: idToken })
  t.match(native.json(), { mfa_required: true, mfa_token: String })
  t.equal(native.headers['set-cookie'], undefined)
})

t.test('the first proof of an address removes the identities that did not prove it', async (t) => {
  const inbox = await startInbox(t)
  const corp = await providerFor(t, ['corp'])
  const app = await build(t, {
    env: {
      PUBLIC_URL,
      SMTP_URL: inbox.url,
      EMAIL_SIGN_IN: 'true',
      OIDC_PROVIDERS: 'corp',
      OIDC_RETURN_URLS: RETURN,
      // A generic provider not trusted for addresses: anyone may say any address there.
      ...providerEnv('corp', corp)
    }
  })

  t.test('an account made by an untrusted provider with the owner\'s address: the owner\'s mailed code takes it back', async (t) => {
    const owner = person('owner')
    const attacker = { sub: `${owner.sub}-attacker`, claims: { email: owner.email, email_verified: true, preferred_username: 'attacker' } }
    corp.accounts.set(attacker.sub, attacker.claims)
    const made = await detailOf(app, signedIn(t, await signIn(app, corp, 'corp', attacker.sub)))
    t.match(made, { email: owner.email, email_verified: false }, 'the provider\'s word is not proof')

    t.equal((await postJson(app, '/api/auth/email/sign-in', { email: owner.email })).statusCode, 202)
    await app.outbox.work()
    const proof = await postJson(app, '/api/auth/email/sign-in/verify', { email: owner.email, code: codeOf(await inbox.find(owner.email, /Your code to sign in/)) })
    t.equal(proof.statusCode, 200)
    t.match(await detailOf(app, proof.json().access), { id: made.id, email_verified: true })
    // Catches pre-account hijacking: the attacker's identity would still sign into the owner's account.
    t.same(await identitiesIn(app, made.id), [], 'the unproven identity is gone')
    refused(t, await signIn(app, corp, 'corp', attacker.sub), 'account_exists')
    t.equal(await accountsWith(app, owner.email), 1)
  })

  t.test('with EMAIL_SIGN_IN on, the only identity of a password-less account may go', async (t) => {
    const jo = person('jo')
    corp.accounts.set(jo.sub, jo.claims)
    const access = signedIn(t, await signIn(app, corp, 'corp', jo.sub))
    const [identity] = await listed(app, access)
    t.equal((await unlink(app, access, identity!.id)).statusCode, 204, 'the mailed code is still a way in')
  })
})

t.test('unlinking with a password reset configured: the reset is a way in', async (t) => {
  const inbox = await startInbox(t)
  const corp = await providerFor(t, ['corp'])
  const app = await build(t, { env: { PUBLIC_URL, SMTP_URL: inbox.url, APP_RESET_URL: 'http://localhost:5173/reset', OIDC_PROVIDERS: 'corp', OIDC_RETURN_URLS: RETURN, ...providerEnv('corp', corp, { TRUST_EMAIL: 'true' }) } })
  const kim = person('kim')
  corp.accounts.set(kim.sub, kim.claims)
  const access = signedIn(t, await signIn(app, corp, 'corp', kim.sub))
  const [identity] = await listed(app, access)
  t.equal((await unlink(app, access, identity!.id)).statusCode, 204)
})
