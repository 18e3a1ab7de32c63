import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { auditEvents, bearer, build, postJson, register, TestClock, uniqueUser } from './helper.ts'
import { codeOf, startInbox, tokenOf } from './smtp.ts'

// Email verification and sign-in by a mailed code (issue 18): the mail through a real SMTP
// server (smtp-server, read with mailparser). Both engines.

const VERIFY_URL = 'https://app.example.com/verify-email'
const otherCode = (code: string): string => code === '000000' ? '111111' : '000000'
const verify = (app: FastifyInstance, body: Record<string, string>, headers: Record<string, string> = {}) => postJson(app, '/api/auth/email/verify', body, headers)
const resend = (app: FastifyInstance, email: string) => postJson(app, '/api/auth/email/verification', { email })
const password = (app: FastifyInstance, user: { username: string, password: string }) => postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })

async function verifiedState (app: FastifyInstance, access: string): Promise<{ detail: unknown, check: unknown }> {
  const detail = (await app.inject({ url: '/api/detail', headers: bearer(access) })).json().user.email_verified
  const check = (await app.inject({ url: '/api/auth/check', headers: bearer(access) })).headers['x-auth-email-verified']
  return { detail, check }
}

t.test('EMAIL_VERIFICATION=optional', async (t) => {
  const inbox = await startInbox(t)
  const clock = new TestClock()
  const logLines: string[] = []
  const app = await build(t, { clock, logLines, env: { SMTP_URL: inbox.url, EMAIL_VERIFICATION: 'optional', APP_VERIFY_URL: VERIFY_URL } })

  t.test('registration mails a link and a code; the link\'s token verifies once; detail and check say so', async (t) => {
    const user = await register(app)
    const mail = await inbox.next()
    t.match(mail.to, { text: user.email })
    t.equal(mail.subject, 'Verify your email address')
    const token = tokenOf(mail)
    t.ok(mail.text?.includes(`${VERIFY_URL}#token=${token}`), 'the link is APP_VERIFY_URL with the token in the fragment')
    t.ok(typeof mail.html === 'string' && mail.html.includes(`href="${VERIFY_URL}#token=${token}"`), 'the HTML has the same link')

    const signedIn = await password(app, user)
    t.equal(signedIn.statusCode, 200, 'optional: an address not yet verified signs in')
    const { access } = signedIn.json()
    t.same(await verifiedState(app, access), { detail: false, check: 'false' })

    for (const method of ['GET', 'HEAD'] as const) {
      t.equal((await app.inject({ method, url: `/api/auth/email/verify?token=${token}` })).statusCode, 404, `${method} spends nothing`)
    }
    // The page of the link, in the browser that signed in: its session shows it holds the account.
    const res = await verify(app, { token }, bearer(access))
    t.equal(res.statusCode, 200)
    t.same(res.json(), { email_verified: true }, 'nothing of the account is removed')
    t.same(await verifiedState(app, access), { detail: true, check: 'true' }, 'the same access token, at once')
    t.match((await verify(app, { token }, bearer(access))).json(), { status: 400, code: 'verification_token_invalid' }, 'once only')

    const events = await auditEvents(app, user.id, ['event', 'outcome', 'detail'], { event: 'email_verified' })
    t.same(events, [{ event: 'email_verified', outcome: 'success', detail: { by: 'link', holder: true } }])
    const leaked = logLines.filter((line) => !line.includes('"url":"/api/auth/email/verify?token=') && (line.includes(token) || line.includes(codeOf(mail))))
    t.same(leaked, [], 'neither the token nor the code is ever logged (but for the URL the test itself put the token in)')
    await app.outbox.work()
    t.same(await app.db.selectFrom('mail_outbox').selectAll().execute(), [], 'sent mail leaves the outbox')
  })

  t.test('by the code: five wrong codes kill it; a new mail (asked for after a minute) cancels the old one and works', async (t) => {
    const user = await register(app)
    const first = await inbox.next()
    const code = codeOf(first)
    for (let i = 0; i < 5; i++) t.match((await verify(app, { email: user.email, code: otherCode(code) })).json(), { status: 400, code: 'verification_token_invalid' })
    t.match((await verify(app, { email: user.email, code })).json(), { code: 'verification_token_invalid' }, 'dead after five wrong codes')

    clock.advance(61)
    t.same((await resend(app, user.email)).json(), {})
    await app.outbox.work()
    const second = await inbox.next()
    t.not(tokenOf(second), tokenOf(first))
    clock.advance(61)
    await resend(app, user.email)
    await app.outbox.work()
    const third = await inbox.next()
    t.match((await verify(app, { token: tokenOf(second) })).json(), { code: 'verification_token_invalid' }, 'the newer mail cancelled the older')
    t.match((await verify(app, { email: user.email, code: codeOf(third), password: 'not the password at all' })).json(), { status: 401, code: 'invalid_credentials' }, 'a wrong password spends nothing')
    t.same((await verify(app, { email: user.email.toUpperCase(), code: codeOf(third), password: user.password })).json(), { email_verified: true }, 'the address as typed, any case; the password shows whoever verifies holds the account')
    t.match((await verify(app, { email: user.email, code: codeOf(third), token: tokenOf(third) })).json(), { status: 400, code: 'validation_failed', errors: [{ field: 'token' }] }, 'a link or a code, not both')
  })

  t.test('a resend for an unknown or a verified address: the same 202, no mail', async (t) => {
    const user = await register(app)
    await verify(app, { token: tokenOf(await inbox.next()), password: user.password })
    clock.advance(61)
    const sent = inbox.mails.length
    for (const email of [user.email, uniqueUser('nobody').email]) {
      const res = await resend(app, email)
      t.equal(res.statusCode, 202)
      t.same(res.json(), {})
    }
    await app.outbox.work()
    t.equal(inbox.mails.length, sent, 'nothing is sent')
    t.equal(await app.outbox.waiting(), 0, 'and nothing waits')
  })

  t.test('five wrong codes typed with someone\'s address kill the code, never the link in their mail', async (t) => {
    const user = await register(app)
    const mail = await inbox.next()
    for (let i = 0; i < 5; i++) t.match((await verify(app, { email: user.email, code: otherCode(codeOf(mail)) })).json(), { code: 'verification_token_invalid' })
    t.same((await verify(app, { token: tokenOf(mail), password: user.password })).json(), { email_verified: true }, 'the link still verifies')
  })

  t.test('a mail sent to an address the account no longer has verifies nothing', async (t) => {
    const user = await register(app)
    const mail = await inbox.next()
    const moved = uniqueUser('moved').email
    await app.sessions.changingUser(user.id, (trx) => trx.updateTable('users').set({ email: moved }).where('id', '=', user.id).execute())
    t.match((await verify(app, { token: tokenOf(mail) })).json(), { status: 400, code: 'verification_token_invalid' })
    const row = await app.db.selectFrom('users').select('email_verified_at').where('id', '=', user.id).executeTakeFirstOrThrow()
    t.equal(row.email_verified_at, null)
  })

  t.test('email sign-in is off unless EMAIL_SIGN_IN', async (t) => {
    t.equal((await postJson(app, '/api/auth/email/sign-in', { email: 'someone@example.com' })).statusCode, 404)
    t.equal((await postJson(app, '/api/auth/email/sign-in/verify', { email: 'someone@example.com', code: '123456' })).statusCode, 404)
  })
})

t.test('EMAIL_VERIFICATION=required: no sign-in until the address is verified, and the answer says so', async (t) => {
  const inbox = await startInbox(t)
  const app = await build(t, { env: { SMTP_URL: inbox.url, EMAIL_VERIFICATION: 'required', APP_VERIFY_URL: VERIFY_URL } })
  const user = await register(app)
  const mail = await inbox.next()
  const refused = await password(app, user)
  t.equal(refused.statusCode, 403)
  t.match(refused.json(), { status: 403, code: 'email_not_verified' })
  t.equal(refused.headers['set-cookie'], undefined, 'no cookie')
  const simplejwt = await postJson(app, '/api/token', { username: user.username, password: user.password })
  t.match(simplejwt.json(), { status: 403, code: 'email_not_verified' }, '/api/token as well')
  const wrongPassword = await password(app, { ...user, password: 'not the password at all' })
  t.match(wrongPassword.json(), { status: 401 }, 'a wrong password learns nothing about the address')

  // No session can be had before: the page of the link asks for the password, which keeps it.
  t.same((await verify(app, { token: tokenOf(mail), password: user.password })).json(), { email_verified: true })
  t.equal((await password(app, user)).statusCode, 200, 'verified: signed in')
  t.equal((await postJson(app, '/api/token', { username: user.username, password: user.password })).statusCode, 200)

  const events = await auditEvents(app, user.id, ['outcome', 'detail'], { event: 'login' })
  t.match(events, [{ outcome: 'failure', detail: { reason: 'email_not_verified' } }, { outcome: 'failure', detail: { reason: 'email_not_verified' } }, { outcome: 'success' }, { outcome: 'success' }])
})

t.test('EMAIL_SIGN_IN: a code by mail for a token pair and the cookies, as login gives them', async (t) => {
  const inbox = await startInbox(t)
  const clock = new TestClock()
  const app = await build(t, { clock, env: { SMTP_URL: inbox.url, EMAIL_SIGN_IN: 'true', EMAIL_VERIFICATION: 'required', APP_VERIFY_URL: VERIFY_URL } })
  const signIn = (email: string) => postJson(app, '/api/auth/email/sign-in', { email })
  const withCode = (email: string, code: string) => postJson(app, '/api/auth/email/sign-in/verify', { email, code })
  // A new user (its verification mail read and left) and the sign-in code mailed to it a minute later.
  const mailedCode = async () => {
    const user = await register(app)
    await inbox.next()
    clock.advance(61)
    await signIn(user.email)
    await app.outbox.work()
    return { user, code: codeOf(await inbox.next()) }
  }

  t.test('the code signs in once and proves the address', async (t) => {
    const user = await register(app)
    await inbox.next() // the verification mail, not used
    const res = await signIn(user.email)
    t.equal(res.statusCode, 202)
    t.same(res.json(), {})
    await app.outbox.work()
    const mail = await inbox.next()
    t.equal(mail.subject, 'Your sign-in code')
    t.notMatch(mail.text, /#token=/, 'a code only: nothing for a scanner to follow')
    const code = codeOf(mail)

    const signedIn = await withCode(user.email, code)
    t.equal(signedIn.statusCode, 200)
    const pair = signedIn.json()
    t.match(pair, { access: String, refresh: String })
    const cookies = ([] as string[]).concat(signedIn.headers['set-cookie'] ?? []).map((cookie) => cookie.split('=')[0]).sort()
    t.same(cookies, ['__Host-access_token', '__Host-refresh_binding', '__Secure-refresh_token'])
    t.same(await verifiedState(app, pair.access), { detail: true, check: 'true' }, 'the code proved the address')
    // The account's first proof: a password set before by whoever registered is not the owner's to keep (test/address-proof.test.ts).
    t.equal((await password(app, user)).statusCode, 401, 'the password set before the first proof is gone')
    t.equal((await inbox.next()).subject, 'Your address was confirmed')
    t.match((await withCode(user.email, code)).json(), { status: 400, code: 'sign_in_code_invalid' }, 'once only')

    const events = await auditEvents(app, user.id, ['event', 'detail'], { event: 'login', outcome: 'success' })
    t.match(events[0], { detail: { method: 'email_code' } })
  })

  t.test('the code is read from the mail after its colon: a username of six digits or more comes before it', async (t) => {
    // uniqueUser() names users by the process id, which has six digits or more where pid_max
    // is above 999999 (Linux's default is 4194304): the mail's first six digits are then the name's.
    const user = await register(app, uniqueUser('u1234567'))
    await inbox.next()
    clock.advance(61)
    await signIn(user.email)
    await app.outbox.work()
    const mail = await inbox.next()
    t.match(mail.text, /sign in as u1234567/)
    t.equal((await withCode(user.email, codeOf(mail))).statusCode, 200)
  })

  t.test('five wrong codes kill it; an unknown address answers the same', async (t) => {
    const { user, code } = await mailedCode()
    for (let i = 0; i < 5; i++) t.match((await withCode(user.email, otherCode(code))).json(), { status: 400, code: 'sign_in_code_invalid' })
    t.match((await withCode(user.email, code)).json(), { status: 400, code: 'sign_in_code_invalid' }, 'dead after five wrong codes')

    const sent = inbox.mails.length
    const nobody = uniqueUser('nobody').email
    t.same((await signIn(nobody)).json(), {})
    await app.outbox.work()
    t.equal(inbox.mails.length, sent, 'no mail for no account')
    t.match((await withCode(nobody, code)).json(), { status: 400, code: 'sign_in_code_invalid' })
  })

  t.test('a disabled account gets no code, and an earlier code no longer signs it in', async (t) => {
    const { user, code } = await mailedCode()
    await app.sessions.changingUser(user.id, (trx) => trx.updateTable('users').set({ is_active: false }).where('id', '=', user.id).execute())
    t.match((await withCode(user.email, code)).json(), { status: 400, code: 'sign_in_code_invalid' })
    clock.advance(61)
    const sent = inbox.mails.length
    t.equal((await signIn(user.email)).statusCode, 202)
    await app.outbox.work()
    t.equal(inbox.mails.length, sent)
  })
})

t.test('EMAIL_VERIFICATION=off (the default): registration mails nothing and the routes are not there', async (t) => {
  const inbox = await startInbox(t)
  const app = await build(t, { env: { SMTP_URL: inbox.url } })
  const user = await register(app)
  await app.outbox.work()
  t.same(inbox.mails, [])
  t.equal((await resend(app, user.email)).statusCode, 404)
  t.equal((await verify(app, { token: 'x'.repeat(43) })).statusCode, 404)
  const { access } = (await password(app, user)).json()
  t.same(await verifiedState(app, access), { detail: false, check: 'false' })
})

t.test('the OpenAPI document lists the email routes with every status they answer', async (t) => {
  const app = await build(t, { env: { EMAIL_VERIFICATION: 'optional', APP_VERIFY_URL: VERIFY_URL, EMAIL_SIGN_IN: 'true' } })
  const { paths } = (await app.inject({ url: '/docs/json' })).json()
  const statuses = (path: string) => Object.keys(paths[path].post.responses).sort()
  t.same(statuses('/api/auth/email/verification'), ['202', '400', '413', '415', '429', '500', '503'])
  t.same(statuses('/api/auth/email/verify'), ['200', '400', '401', '413', '415', '429', '500', '503'])
  t.same(statuses('/api/auth/email/sign-in'), ['202', '400', '413', '415', '429', '500', '503'])
  t.same(statuses('/api/auth/email/sign-in/verify'), ['200', '400', '403', '413', '415', '429', '500', '503'])
  t.same(Object.keys(paths['/api/detail'].get.responses['200'].content['application/json'].schema.properties.user.properties).sort(), ['email', 'email_verified', 'id', 'username'])
})
