import t, { type Test } from 'tap'
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose'
import { generateSync } from 'otplib'
import { auditEvents, basic, bearer, build, claimsOf, login, operator, postJson, register, TestClock } from './helper.ts'
import { codeOf as mailedCodeOf, startInbox, tokenOf } from './smtp.ts'

// Second factors (issue 19): TOTP that no code is taken twice of, recovery codes, the two-step
// sign-in on every first-factor path, aal/amr/auth_time in tokens, check and introspection. Both engines.

const INTROSPECTOR = { id: 'gateway', secret: 'introspection-secret-0123456789' }
type User = Awaited<ReturnType<typeof register>>

t.test('second factors', async (t) => {
  const inbox = await startInbox(t)
  const clock = new TestClock()
  const app = await build(t, {
    clock,
    env: { SMTP_URL: inbox.url, APP_RESET_URL: 'http://127.0.0.1:9/reset', EMAIL_SIGN_IN: 'true', INTROSPECTION_CLIENTS: `${INTROSPECTOR.id}:${INTROSPECTOR.secret}` }
  })
  const nowS = (): number => Math.floor(clock.now().getTime() / 1000)
  /** The code the authenticator app shows `steps` time steps from now. */
  const codeOf = (secret: string, steps = 0): string => generateSync({ secret, epoch: nowS() + steps * 30 })
  /** The next time step: a code of it was never used. */
  const nextStep = (): void => clock.advance(30)

  /**
   * A user with a verified TOTP factor, whose address was proven before (its first proof would
   * remove the factor: test/address-proof.test.ts): its secret, the aal2 pair enrolment gave, the recovery codes.
   */
  async function enrolled (): Promise<{ user: User, secret: string, factorId: string, access: string, refresh: string, recoveryCodes: string[] }> {
    const { access, user } = await login(app)
    await app.db.updateTable('users').set({ email_verified_at: new Date() }).where('id', '=', user.id).execute()
    const added = (await postJson(app, '/api/auth/mfa/totp', {}, bearer(access))).json()
    const verified = await postJson(app, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: codeOf(added.secret) }, bearer(access))
    if (verified.statusCode !== 200) throw new Error(`enrolment failed: ${verified.body}`)
    nextStep()
    const body = verified.json()
    return { user, secret: added.secret, factorId: added.factor_id, access: body.access, refresh: body.refresh, recoveryCodes: body.recovery_codes }
  }
  /** The first step by password: its answer. */
  const firstStep = (user: User, path = '/api/auth/login') => postJson(app, path, path === '/api/auth/login' ? { identifier: user.username, password: user.password } : { username: user.username, password: user.password })
  const mfaTokenOf = async (user: User): Promise<string> => (await firstStep(user)).json().mfa_token
  const secondStep = (mfaToken: string, code: string, method = 'totp') => postJson(app, '/api/auth/mfa/verify', { mfa_token: mfaToken, method, code })
  const detail = (access: string) => app.inject({ url: '/api/detail', headers: bearer(access) })
  t.test('enrolment: a secret, its first code verifies it, the session becomes aal2 and gets ten recovery codes', async (t) => {
    const { access, user } = await login(app)
    const other = await login(app, user)
    t.same((await app.inject({ url: '/api/auth/mfa/factors', headers: bearer(access) })).json(), { factors: [] })
    const res = await postJson(app, '/api/auth/mfa/totp', {}, bearer(access))
    t.equal(res.statusCode, 201)
    const added = res.json()
    t.match(added, { factor_id: /^[0-9a-f-]{36}$/, secret: /^[A-Z2-7]{32}$/ })
    t.equal(added.otpauth_uri, `otpauth://totp/authgate:${encodeURIComponent(user.username)}?secret=${added.secret}&issuer=authgate`)
    t.match((await app.inject({ url: '/api/auth/mfa/factors', headers: bearer(access) })).json(), { factors: [{ id: added.factor_id, kind: 'totp', verified: false }] })
    t.equal((await firstStep(user)).json().mfa_required, undefined, 'an unverified factor asks for nothing')

    const wrong = codeOf(added.secret) === '000000' ? '111111' : '000000'
    t.match((await postJson(app, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: wrong }, bearer(access))).json(), { status: 400, code: 'mfa_code_invalid' })
    const verified = await postJson(app, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: codeOf(added.secret) }, bearer(access))
    t.equal(verified.statusCode, 200)
    const body = verified.json()
    t.equal(body.recovery_codes.length, 10)
    t.equal(new Set(body.recovery_codes).size, 10)
    for (const code of body.recovery_codes) t.match(code, /^[0-9a-f]{5}-[0-9a-f]{5}-[0-9a-f]{5}-[0-9a-f]{5}$/, '80 bits each')
    t.match(claimsOf(body.access), { aal: 'aal2', amr: ['pwd', 'otp', 'mfa'], auth_time: nowS() })
    t.not(claimsOf(body.access).sid, claimsOf(access).sid, 'a new session')
    t.equal((await detail(access)).statusCode, 401, 'the aal1 session it replaced is over')
    t.equal((await detail(body.access)).statusCode, 200)
    t.same((await app.inject({ url: '/api/auth/mfa/recovery-codes', headers: bearer(body.access) })).json(), { remaining: 10 })

    // What the database holds: neither the secret nor a recovery code.
    const stored = JSON.stringify([await app.db.selectFrom('mfa_factors').selectAll().where('user_id', '=', user.id).execute(), await app.db.selectFrom('recovery_codes').selectAll().where('user_id', '=', user.id).execute()])
    t.notOk(stored.includes(added.secret), 'the secret is sealed')
    for (const code of body.recovery_codes) t.notOk(stored.includes(code) || stored.includes(code.replaceAll('-', '')), 'a recovery code is a hash')
    t.match((await inbox.find(user.email, /authenticator app was added/)).subject, 'The second factor of your account changed')

    // Another device's session is still aal1: it adds no factor, and steps up with a code.
    t.match((await postJson(app, '/api/auth/mfa/totp', {}, bearer(other.access))).json(), { status: 403, code: 'aal2_required' })
    t.match((await app.inject({ method: 'DELETE', url: `/api/auth/mfa/factors/${added.factor_id}`, headers: bearer(other.access) })).json(), { status: 403, code: 'aal2_required' }, 'nor removes one')
    nextStep()
    const up = await postJson(app, '/api/auth/mfa/verify', { method: 'totp', code: codeOf(added.secret) }, bearer(other.access))
    t.equal(up.statusCode, 200)
    t.match(claimsOf(up.json().access), { aal: 'aal2', amr: ['pwd', 'otp', 'mfa'] })
    t.equal(up.headers['set-cookie'], undefined, 'a Bearer client gets its pair in the body')
    t.equal((await detail(other.access)).statusCode, 401, 'the stepped-up session replaced the old one')
    t.equal((await postJson(app, '/api/auth/mfa/totp', {}, bearer(up.json().access))).statusCode, 201, 'aal2 adds another factor')

    const events = await auditEvents(app, user.id, ['event', 'outcome'], { event: 'mfa_%' })
    t.same(events.map((e) => `${e.event}:${e.outcome}`), [
      'mfa_factor_added:success', 'mfa_factor_verified:failure', 'mfa_factor_verified:success', 'mfa_verify:success', 'mfa_factor_added:success'
    ])
  })

  t.test('every first-factor path asks for the second factor, and no pair or cookie comes before it', async (t) => {
    const { user, secret } = await enrolled()
    const plain = await register(app)
    const simplejwt = await firstStep(plain, '/api/token')
    t.same(Object.keys(simplejwt.json()).sort(), ['access', 'refresh'], 'simplejwt clients of users without a factor get their pair')
    t.match(claimsOf(simplejwt.json().access), { aal: 'aal1', amr: ['pwd'] })

    const answers: Record<string, Awaited<ReturnType<typeof postJson>>> = {
      '/api/auth/login': await firstStep(user),
      '/api/token': await firstStep(user, '/api/token')
    }
    t.equal((await postJson(app, '/api/auth/email/sign-in', { email: user.email })).statusCode, 202)
    const mailed = mailedCodeOf(await inbox.find(user.email, /sign-in code|sign in/i))
    answers['/api/auth/email/sign-in/verify'] = await postJson(app, '/api/auth/email/sign-in/verify', { email: user.email, code: mailed })
    for (const [path, res] of Object.entries(answers)) {
      t.equal(res.statusCode, 200, path)
      t.same(Object.keys(res.json()).sort(), ['methods', 'mfa_required', 'mfa_token'], `${path}: no pair`)
      t.match(res.json(), { mfa_required: true, mfa_token: /^[A-Za-z0-9_-]{43}$/, methods: ['totp', 'recovery_code'] })
      t.equal(res.headers['set-cookie'], undefined, `${path}: no cookie`)
    }

    const viaLogin = await secondStep(answers['/api/auth/login']!.json().mfa_token, codeOf(secret))
    t.equal(viaLogin.statusCode, 200)
    t.match(String(viaLogin.headers['set-cookie']), /__Host-access_token=/, 'after login: the cookies, as login sets them')
    t.match(claimsOf(viaLogin.json().access), { aal: 'aal2', amr: ['pwd', 'otp', 'mfa'], auth_time: nowS() })
    nextStep()
    const viaToken = await secondStep(answers['/api/token']!.json().mfa_token, codeOf(secret))
    t.equal(viaToken.statusCode, 200)
    t.equal(viaToken.headers['set-cookie'], undefined, 'after /api/token: the body alone')
    nextStep()
    const viaMail = await secondStep(answers['/api/auth/email/sign-in/verify']!.json().mfa_token, codeOf(secret))
    t.match(claimsOf(viaMail.json().access), { aal: 'aal2', amr: ['otp', 'mfa'] })
    t.match((await secondStep(answers['/api/auth/login']!.json().mfa_token, codeOf(secret, 1))).json(), { status: 401, code: 'mfa_token_invalid' }, 'an mfa_token is spent once')

    // The password changes between the two steps: the first step's mfa_token no longer signs in.
    const pending = await mfaTokenOf(user)
    t.equal((await postJson(app, '/api/auth/password', { current_password: user.password, new_password: 'changed between the steps 9' }, bearer(viaMail.json().access))).statusCode, 204)
    nextStep()
    t.match((await secondStep(pending, codeOf(secret))).json(), { status: 401, code: 'invalid_credentials' })
  })

  t.test('a code is taken once: the window is one step either side, and never an older step than the last', async (t) => {
    for (const edge of ['first', 'last'] as const) {
      const { user, secret } = await enrolled()
      // To the first (or last) millisecond of a time step.
      const intoStep = clock.now().getTime() % 30_000
      clock.advance(((edge === 'first' ? 30_000 : 59_999) - intoStep) / 1000)
      for (const steps of [-2, 2]) t.match((await secondStep(await mfaTokenOf(user), codeOf(secret, steps))).json(), { code: 'mfa_code_invalid' }, `${edge} ms: ${steps} steps away, refused`)
      t.equal((await secondStep(await mfaTokenOf(user), codeOf(secret, -1))).statusCode, 200, `${edge} ms: the step before`)
      t.match((await secondStep(await mfaTokenOf(user), codeOf(secret, -1))).json(), { status: 400, code: 'mfa_code_used' }, `${edge} ms: the same code again (a replay), refused as used`)
      t.equal((await secondStep(await mfaTokenOf(user), codeOf(secret, 1))).statusCode, 200, `${edge} ms: the step after`)
      t.match((await secondStep(await mfaTokenOf(user), codeOf(secret))).json(), { code: 'mfa_code_used' }, `${edge} ms: the current step, older than the one taken, refused as used`)
      nextStep()
      nextStep()
    }
  })

  t.test('two parallel second steps with one code: exactly one succeeds', async (t) => {
    const { user, secret } = await enrolled()
    const tokens = [await mfaTokenOf(user), await mfaTokenOf(user)]
    const code = codeOf(secret)
    const results = await Promise.all(tokens.map((token) => secondStep(token, code)))
    t.same(results.map((r) => r.statusCode).sort(), [200, 400], 'one code, two sign-ins: one session')
    nextStep()
    const token = await mfaTokenOf(user)
    const same = await Promise.all([secondStep(token, codeOf(secret)), secondStep(token, codeOf(secret))])
    // The other finds the code taken (400) or the token spent (401), as the race falls.
    t.same(same.map((r) => r.statusCode === 200).sort(), [false, true], 'one mfa_token twice at once: one session')
    const open = await app.db.selectFrom('sessions').select('id').where('user_id', '=', user.id).where('revoked_at', 'is', null).execute()
    t.equal(open.length, 3, 'the enrolment\'s session and one of each pair of tries')
  })

  t.test('a refresh keeps aal, amr and auth_time, on both refresh endpoints', async (t) => {
    const { refresh, access } = await enrolled()
    clock.advance(120)
    const first = (await postJson(app, '/api/token/refresh', { refresh })).json()
    const before = claimsOf(access)
    for (const token of [first.access, first.refresh]) t.match(claimsOf(token), { aal: 'aal2', amr: ['pwd', 'otp', 'mfa'], auth_time: before.auth_time })
    const oauth = await app.inject({ method: 'POST', url: '/oauth/token', payload: `grant_type=refresh_token&refresh_token=${first.refresh}`, headers: { 'content-type': 'application/x-www-form-urlencoded' } })
    t.match(claimsOf(oauth.json().access_token), { aal: 'aal2', amr: ['pwd', 'otp', 'mfa'], auth_time: before.auth_time })
  })

  t.test('recovery codes: each once, in any case and without dashes; used up, new ones; a notice for each use', async (t) => {
    const { user, recoveryCodes, secret } = await enrolled()
    const [firstCode, ...rest] = recoveryCodes
    const res = await secondStep(await mfaTokenOf(user), firstCode!.toUpperCase().replaceAll('-', ''), 'recovery_code')
    t.equal(res.statusCode, 200)
    t.equal(claimsOf(res.json().access).aal, 'aal2')
    t.same(claimsOf(res.json().access).amr, ['pwd', 'recovery_code', 'mfa'], 'a recovery code is told apart from a TOTP')
    t.match((await secondStep(await mfaTokenOf(user), firstCode!, 'recovery_code')).json(), { status: 400, code: 'mfa_code_used' }, 'once only')
    t.match((await inbox.find(user.email, /recovery code was used \(9 left\)/)).subject, 'The second factor of your account changed')

    // The rest spent by step-ups of one session, each renewing it.
    let access = res.json().access
    for (const code of rest) {
      const up = await postJson(app, '/api/auth/mfa/verify', { method: 'recovery_code', code }, bearer(access))
      t.equal(up.statusCode, 200)
      access = up.json().access
    }
    t.same((await app.inject({ url: '/api/auth/mfa/recovery-codes', headers: bearer(access) })).json(), { remaining: 0 })
    t.same((await firstStep(user)).json().methods, ['totp'], 'none left: TOTP alone is offered')

    const fresh = await postJson(app, '/api/auth/mfa/recovery-codes', {}, bearer(access))
    t.equal(fresh.statusCode, 200)
    t.equal(fresh.json().recovery_codes.length, 10)
    t.match((await secondStep(await mfaTokenOf(user), fresh.json().recovery_codes[0], 'recovery_code')).json(), { access: String })
    await inbox.find(user.email, /new recovery codes were made/)

    // An aal1 session of a user without a factor makes none.
    const plain = await login(app)
    t.match((await postJson(app, '/api/auth/mfa/recovery-codes', {}, bearer(plain.access))).json(), { status: 403, code: 'aal2_required' })
    t.ok(secret)
  })

  t.test('five tries per mfa_token; ten failures in a row lock the second step for 15 minutes', async (t) => {
    const { user, secret } = await enrolled()
    const wrong = (): string => codeOf(secret) === '000000' ? '111111' : '000000'
    const first = await mfaTokenOf(user)
    for (let i = 0; i < 5; i++) t.match((await secondStep(first, wrong())).json(), { status: 400, code: 'mfa_code_invalid' })
    t.match((await secondStep(first, codeOf(secret))).json(), { status: 401, code: 'mfa_token_invalid' }, 'the sixth try: the token is dead, even with the right code')
    const second = await mfaTokenOf(user)
    for (let i = 0; i < 4; i++) t.match((await secondStep(second, wrong())).json(), { code: 'mfa_code_invalid' })
    t.match((await secondStep(second, wrong())).json(), { status: 403, code: 'mfa_locked' }, 'the tenth failure in a row locks')
    t.match((await secondStep(await mfaTokenOf(user), codeOf(secret))).json(), { status: 403, code: 'mfa_locked' }, 'the right code is refused while locked')
    clock.advance(15 * 60)
    t.equal((await secondStep(await mfaTokenOf(user), codeOf(secret))).statusCode, 200, 'after 15 minutes it works')
    const locked = await auditEvents(app, user.id, ['detail'], { event: 'mfa_verify', outcome: 'failure' })
    t.equal(locked.length, 11, 'every failure is in the trail, the refusal while locked too')
    t.ok(locked.some((e) => e.detail?.locked_for_s === 900))
  })

  t.test('a password reset of an account with a second factor takes a code of it too', async (t) => {
    const { user, secret, recoveryCodes } = await enrolled()
    t.equal((await postJson(app, '/api/auth/password/forgot', { email: user.email })).statusCode, 202)
    const mail = await inbox.find(user.email, /#token=/)
    const token = tokenOf(mail)
    const resetCode = mailedCodeOf(mail)
    const inspect = async () => (await postJson(app, '/api/auth/password/reset/inspect', { token })).json()
    t.match(await inspect(), { valid: true, mfa_required: true })
    const reset = (body: Record<string, string>) => postJson(app, '/api/auth/password/reset', { new_password: 'a reset with two methods 7', ...body })
    t.match((await reset({ token })).json(), { status: 400, code: 'mfa_required' })
    t.match((await reset({ token, mfa_method: 'totp' })).json(), { status: 400, code: 'validation_failed' })
    const wrong = codeOf(secret) === '000000' ? '111111' : '000000'
    t.match((await reset({ token, mfa_method: 'totp', mfa_code: wrong })).json(), { status: 400, code: 'mfa_code_invalid' })
    t.match(await inspect(), { valid: true }, 'neither spent the link')
    t.match((await reset({ email: user.email, code: resetCode === '000000' ? '111111' : '000000', mfa_method: 'totp', mfa_code: codeOf(secret) })).json(), { code: 'reset_token_invalid' }, 'a wrong mail code is refused before the second factor is looked at')
    t.equal((await reset({ token, mfa_method: 'totp', mfa_code: codeOf(secret) })).statusCode, 204)
    t.match(await inspect(), { valid: false })
    t.match((await firstStep({ ...user, password: 'a reset with two methods 7' })).json(), { mfa_required: true }, 'the factor stays')

    // By the mail's code and a recovery code.
    clock.advance(61)
    t.equal((await postJson(app, '/api/auth/password/forgot', { email: user.email })).statusCode, 202)
    await app.outbox.work()
    const code = mailedCodeOf(inbox.latest(user.email, /asked to reset the password/)!)
    t.not(code, resetCode)
    t.equal((await reset({ email: user.email, code, mfa_method: 'recovery_code', mfa_code: recoveryCodes[0]!, new_password: 'and once more with a recovery code' })).statusCode, 204)
  })

  t.test('removing a factor takes a recent aal2 session; the last one takes the recovery codes with it', async (t) => {
    const { user, secret, factorId, refresh } = await enrolled()
    const other = await login(app)
    t.match((await app.inject({ method: 'DELETE', url: `/api/auth/mfa/factors/${factorId}`, headers: bearer(other.access) })).json(), { status: 404 }, 'another user\'s factor is not found')
    // A refresh keeps the enrolment's auth_time: 11 minutes on, the session is aal2 but not recent.
    clock.advance(11 * 60)
    const refreshed = (await postJson(app, '/api/token/refresh', { refresh })).json()
    t.match((await app.inject({ method: 'DELETE', url: `/api/auth/mfa/factors/${factorId}`, headers: bearer(refreshed.access) })).json(), { status: 403, code: 'reauthentication_required' })
    const up = (await postJson(app, '/api/auth/mfa/verify', { method: 'totp', code: codeOf(secret) }, bearer(refreshed.access))).json()
    t.equal((await app.inject({ method: 'DELETE', url: `/api/auth/mfa/factors/${factorId}`, headers: bearer(up.access) })).statusCode, 204)
    t.same((await app.inject({ url: '/api/auth/mfa/recovery-codes', headers: bearer(up.access) })).json(), { remaining: 0 })
    t.same(Object.keys((await firstStep(user)).json()).sort(), ['access', 'refresh'], 'a sign-in is one step again')
    await inbox.find(user.email, /a second factor was removed/)
  })

  t.test('an operator resets a user\'s factors with a reason: their sessions end unless told not to; the user is told', async (t) => {
    const { user, access } = await enrolled()
    const ops = await operator(app)
    const reset = (body: unknown) => postJson(app, `/api/admin/users/${user.id}/mfa/reset`, body, bearer(ops.token))
    t.match((await reset({})).json(), { status: 400, code: 'validation_failed' })
    const res = await reset({ reason: 'lost phone, ticket 77' })
    t.equal(res.statusCode, 200)
    t.same(res.json(), { factors_removed: 1, sessions_ended: 1 })
    t.equal((await detail(access)).statusCode, 401, 'whoever holds the phone holds no session either')
    t.same(Object.keys((await firstStep(user)).json()).sort(), ['access', 'refresh'])
    await inbox.find(user.email, /an operator removed every second factor of the account and ended its sessions/)
    t.match((await auditEvents(app, user.id, ['detail'], { event: 'user_mfa_reset' }))[0], { detail: { reason: 'lost phone, ticket 77', client_id: ops.id, sessions_ended: 1 } })
    t.equal((await postJson(app, '/api/admin/users/2147483647/mfa/reset', { reason: 'x' }, bearer(ops.token))).statusCode, 404)

    const kept = await enrolled()
    t.same((await postJson(app, `/api/admin/users/${kept.user.id}/mfa/reset`, { reason: 'phone replaced', keep_sessions: true }, bearer(ops.token))).json(), { factors_removed: 1, sessions_ended: 0 })
    t.equal((await detail(kept.access)).statusCode, 200, 'keep_sessions: the sessions stand')
  })

  t.test('adding a factor, and new recovery codes, take a recent sign-in: a stolen token of an older one adds nothing', async (t) => {
    const { refresh, user } = await login(app)
    clock.advance(11 * 60)
    // The refresh keeps the sign-in's auth_time: its fresh token is as old a proof as the first.
    const refreshed = (await postJson(app, '/api/token/refresh', { refresh })).json()
    t.match((await postJson(app, '/api/auth/mfa/totp', {}, bearer(refreshed.access))).json(), { status: 403, code: 'reauthentication_required' }, 'no first factor added')
    t.equal((await app.db.selectFrom('mfa_factors').select('id').where('user_id', '=', user.id).execute()).length, 0)
    const again = await login(app, user)
    t.equal((await postJson(app, '/api/auth/mfa/totp', {}, bearer(again.access))).statusCode, 201, 'a sign-in again is the recent proof')

    const protectedUser = await enrolled()
    clock.advance(11 * 60)
    const stale = (await postJson(app, '/api/token/refresh', { refresh: protectedUser.refresh })).json()
    t.match((await postJson(app, '/api/auth/mfa/recovery-codes', {}, bearer(stale.access))).json(), { status: 403, code: 'reauthentication_required' }, 'no new recovery codes from an old aal2 sign-in')
    t.match((await postJson(app, '/api/auth/mfa/totp', {}, bearer(stale.access))).json(), { status: 403, code: 'reauthentication_required' }, 'nor another factor')
    const up = (await postJson(app, '/api/auth/mfa/verify', { method: 'totp', code: codeOf(protectedUser.secret) }, bearer(stale.access))).json()
    t.equal((await postJson(app, '/api/auth/mfa/recovery-codes', {}, bearer(up.access))).statusCode, 200, 'a step-up is the recent proof')
  })

  t.test('aal, amr and auth_time as jose, introspection and forward auth read them', async (t) => {
    const { access } = await enrolled()
    const plain = await login(app)
    const jwks = createLocalJWKSet((await app.inject({ url: '/.well-known/jwks.json' })).json() as JSONWebKeySet)
    const { payload } = await jwtVerify(access, jwks, { issuer: app.config.JWT_ISSUER, audience: app.config.JWT_AUDIENCE, currentDate: clock.now() })
    t.match(payload, { aal: 'aal2', amr: ['pwd', 'otp', 'mfa'], auth_time: Number })
    const introspect = async (token: string) => (await app.inject({
      method: 'POST', url: '/api/token/introspect', payload: `token=${token}`, headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(INTROSPECTOR.id, INTROSPECTOR.secret) }
    })).json()
    t.match(await introspect(access), { active: true, aal: 'aal2', amr: ['pwd', 'otp', 'mfa'], auth_time: payload.auth_time })
    t.match(await introspect(plain.access), { active: true, aal: 'aal1', amr: ['pwd'] })

    const check = (token: string, query = '') => app.inject({ url: `/api/auth/check${query}`, headers: bearer(token) })
    const strong = await check(access, '?aal=aal2')
    t.equal(strong.statusCode, 204)
    t.equal(strong.headers['x-auth-aal'], 'aal2')
    t.equal(strong.headers['x-auth-amr'], 'pwd,otp,mfa')
    t.match((await check(plain.access, '?aal=aal2')).json(), { status: 403, code: 'aal2_required' }, 'the gateway requires aal2')
    t.equal((await check(plain.access)).headers['x-auth-aal'], 'aal1')
    t.match((await check(plain.access, '?aal=aal3')).json(), { status: 400 })
  })

  t.test('the OpenAPI document lists the second factor routes', async (t) => {
    const spec = (await app.inject({ url: '/docs/json' })).json() as { paths: Record<string, Record<string, unknown>> }
    for (const [path, method] of [
      ['/api/auth/mfa/totp', 'post'], ['/api/auth/mfa/totp/{id}/verify', 'post'], ['/api/auth/mfa/factors', 'get'], ['/api/auth/mfa/factors/{id}', 'delete'],
      ['/api/auth/mfa/recovery-codes', 'get'], ['/api/auth/mfa/recovery-codes', 'post'], ['/api/auth/mfa/verify', 'post'], ['/api/admin/users/{id}/mfa/reset', 'post']
    ] as const) t.ok(spec.paths[path]?.[method], `${method} ${path}`)
  })
})

t.test('bad input to the second step is a 400, never a 500', async (t: Test) => {
  const app = await build(t)
  for (const body of [{}, { method: 'totp' }, { method: 'sms', code: '123456' }, { mfa_token: 'x', method: 'totp', code: '123456' }, { mfa_token: 'A'.repeat(43), method: 'totp', code: '12345z' }]) {
    t.equal((await postJson(app, '/api/auth/mfa/verify', body)).statusCode, 400, JSON.stringify(body))
  }
  t.match((await postJson(app, '/api/auth/mfa/verify', { mfa_token: 'A'.repeat(43), method: 'totp', code: '123456' })).json(), { status: 401, code: 'mfa_token_invalid' })
  t.match((await postJson(app, '/api/auth/mfa/verify', { method: 'totp', code: '123456' })).json(), { status: 401, code: 'not_authenticated' }, 'neither an mfa_token nor a session')
})
