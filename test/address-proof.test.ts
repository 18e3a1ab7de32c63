import t from 'tap'
import { generateSync } from 'otplib'
import { auditEvents, bearer, build, postJson, TestClock, uniqueUser } from './helper.ts'
import { codeOf, startInbox, tokenOf } from './smtp.ts'

// Pre-account hijacking (issue 26, item 3; Sudhodanan and Paverd, "Pre-hijacked accounts", 2022):
// whoever registers an address first, without owning it, keeps nothing once the address's owner
// proves it for the first time: by a mailed sign-in code, the verification mail, or a password
// reset. The mails through a real SMTP server. Both engines.

t.test('an address registered by someone else first', async (t) => {
  const inbox = await startInbox(t)
  const clock = new TestClock()
  const app = await build(t, {
    clock,
    env: { SMTP_URL: inbox.url, EMAIL_SIGN_IN: 'true', EMAIL_VERIFICATION: 'optional', APP_VERIFY_URL: 'http://127.0.0.1:9/verify', APP_RESET_URL: 'http://127.0.0.1:9/reset' }
  })
  const signIn = (identifier: string, password: string) => postJson(app, '/api/auth/login', { identifier, password })
  const alive = async (access: string): Promise<boolean> => (await app.inject({ url: '/api/detail', headers: bearer(access) })).statusCode === 200

  /**
   * The squatter: registers the owner's address with a password of their own, signs in on two
   * devices, adds an authenticator app. The owner's inbox holds the verification mail.
   */
  async function squatted () {
    const squatter = uniqueUser('squatter')
    t.equal((await postJson(app, '/api/auth/register', squatter)).statusCode, 201)
    const sessions = [(await signIn(squatter.username, squatter.password)).json(), (await signIn(squatter.username, squatter.password)).json()]
    const added = (await postJson(app, '/api/auth/mfa/totp', {}, bearer(sessions[0].access))).json()
    const verified = await postJson(app, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: generateSync({ secret: added.secret, epoch: Math.floor(clock.now().getTime() / 1000) }) }, bearer(sessions[0].access))
    t.equal(verified.statusCode, 200, 'the squatter\'s factor')
    sessions[0] = verified.json()
    clock.advance(30)
    const verification = await inbox.find(squatter.email, /#token=/)
    return { squatter, sessions: sessions as Array<{ access: string, refresh: string }>, verification }
  }
  /** What the squatter still has: their password, their sessions, the factor. */
  async function squatterHas (squatter: { username: string, password: string }, sessions: Array<{ access: string, refresh: string }>) {
    const user = await app.db.selectFrom('users').select('id').where('username', '=', squatter.username).executeTakeFirstOrThrow()
    return {
      password: (await signIn(squatter.username, squatter.password)).statusCode !== 401,
      sessions: (await Promise.all(sessions.map((s) => alive(s.access)))).filter(Boolean).length,
      refresh: (await postJson(app, '/api/token/refresh', { refresh: sessions[1]!.refresh })).statusCode === 200,
      factors: (await app.db.selectFrom('mfa_factors').select('id').where('user_id', '=', user.id).execute()).length,
      recoveryCodes: (await app.db.selectFrom('recovery_codes').select('id').where('user_id', '=', user.id).execute()).length
    }
  }
  const nothing = { password: false, sessions: 0, refresh: false, factors: 0, recoveryCodes: 0 }
  async function firstProofEvent (email: string): Promise<unknown> {
    const user = await app.db.selectFrom('users').select('id').where('email', '=', email).executeTakeFirstOrThrow()
    return (await auditEvents(app, user.id, ['detail'], { event: 'address_proven' })).map((e) => e.detail)
  }

  t.test('the owner signs in by a mailed code: the squatter\'s password, sessions and factor are gone, and the owner is told', async (t) => {
    const { squatter, sessions } = await squatted()
    await postJson(app, '/api/auth/email/sign-in', { email: squatter.email })
    await app.outbox.work()
    const code = codeOf(await inbox.find(squatter.email, /Your code to sign in/))
    const owner = await postJson(app, '/api/auth/email/sign-in/verify', { email: squatter.email, code })
    t.equal(owner.statusCode, 200)
    t.match(owner.json(), { access: String, refresh: String }, 'signed in at once: the squatter\'s factor is not asked for')
    t.same(await squatterHas(squatter, sessions), nothing)
    t.ok(await alive(owner.json().access), 'the owner\'s session is the account\'s only one')
    const notice = await inbox.find(squatter.email, /proven for the first time/)
    t.equal(notice.subject, 'Your address was confirmed')
    t.match(notice.text, /the password, 2 signed-in sessions, 1 second factor and the recovery codes/)
    t.same(await firstProofEvent(squatter.email), [{ by: 'email_code', removed: { password: true, sessions: 2, factors: 1, identities: 0, passkeys: 0 } }])

    // Proven once: a later sign-in by code removes nothing.
    clock.advance(61)
    await postJson(app, '/api/auth/email/sign-in', { email: squatter.email })
    await app.outbox.work()
    const again = inbox.latest(squatter.email, /Your code to sign in/)!
    t.equal((await postJson(app, '/api/auth/email/sign-in/verify', { email: squatter.email, code: codeOf(again) })).statusCode, 200)
    t.ok(await alive(owner.json().access), 'the owner\'s first session stands')
    t.equal((await firstProofEvent(squatter.email) as unknown[]).length, 1)
  })

  t.test('the owner follows the verification mail without holding the account: the same, and the answer says the password is gone', async (t) => {
    const { squatter, sessions, verification } = await squatted()
    const res = await postJson(app, '/api/auth/email/verify', { token: tokenOf(verification) })
    t.same(res.json(), { email_verified: true, password_removed: true })
    t.same(await squatterHas(squatter, sessions), nothing)
    t.same(await firstProofEvent(squatter.email), [{ by: 'email_verification', removed: { password: true, sessions: 2, factors: 1, identities: 0, passkeys: 0 } }])

    // The owner sets a password by the reset: no factor is asked for, one step to sign in.
    await postJson(app, '/api/auth/password/forgot', { email: squatter.email })
    await app.outbox.work()
    const reset = await inbox.find(squatter.email, /asked to reset the password/)
    t.match((await postJson(app, '/api/auth/password/reset/inspect', { token: tokenOf(reset) })).json(), { valid: true, mfa_required: false })
    t.equal((await postJson(app, '/api/auth/password/reset', { token: tokenOf(reset), new_password: 'the owner\'s own passphrase' })).statusCode, 204)
    t.match((await signIn(squatter.email, 'the owner\'s own passphrase')).json(), { access: String })
  })

  t.test('the owner resets the password: the squatter\'s factor is not asked for, and goes with the squatter\'s sessions', async (t) => {
    const { squatter, sessions } = await squatted()
    await postJson(app, '/api/auth/password/forgot', { email: squatter.email })
    await app.outbox.work()
    const mail = await inbox.find(squatter.email, /asked to reset the password/)
    t.match((await postJson(app, '/api/auth/password/reset/inspect', { token: tokenOf(mail) })).json(), { valid: true, mfa_required: false })
    t.equal((await postJson(app, '/api/auth/password/reset', { email: squatter.email, code: codeOf(mail), new_password: 'the owner\'s own passphrase' })).statusCode, 204)
    t.same(await squatterHas(squatter, sessions), nothing)
    t.match((await signIn(squatter.email, 'the owner\'s own passphrase')).json(), { access: String }, 'one step: no factor left to ask for')
    t.same(await firstProofEvent(squatter.email), [{ by: 'password_reset', removed: { password: false, sessions: 0, factors: 1, identities: 0, passkeys: 0 } }], 'the reset replaces the password and ends the sessions itself')
    t.match((await inbox.find(squatter.email, /proven for the first time/)).text, /removed:\s+1 second factor and the recovery codes/)
  })

  t.test('whoever registered, and shows it (a session of the account, or its password), keeps everything', async (t) => {
    for (const shown of ['session', 'password'] as const) {
      const { squatter: registrant, sessions, verification } = await squatted()
      const res = await postJson(app, '/api/auth/email/verify', { token: tokenOf(verification), ...(shown === 'password' ? { password: registrant.password } : {}) }, shown === 'session' ? bearer(sessions[1]!.access) : {})
      t.same(res.json(), { email_verified: true }, shown)
      t.same(await squatterHas(registrant, sessions), { password: true, sessions: 2, refresh: true, factors: 1, recoveryCodes: 10 }, `${shown}: password, sessions, factor stay`)
      t.same(await firstProofEvent(registrant.email), [{ by: 'email_verification', removed: { password: false, sessions: 0, factors: 0, identities: 0, passkeys: 0 } }], 'the first proof, which removed nothing')
    }
  })
})
