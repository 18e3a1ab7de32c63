import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { createServer, type IncomingMessage } from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { auditEvents, build, login, operator, postJson, register, TestClock, uniqueUser } from './helper.ts'
import { codeOf, startInbox, tokenOf } from './smtp.ts'
import { pairedRatio } from './timing.ts'

// A forgotten password (issue 18): the mail through a real SMTP server (smtp-server, read with
// mailparser), its link's token in the fragment, its code; the reset ends every session. Both engines.

const NEW_PASSWORD = 'a brand new passphrase 42'

/** The front end's reset page: an HTTP server that records what each request asked for. */
async function frontEnd (t: Test) {
  const seen: Array<{ method: string, url: string }> = []
  const server = createServer((request: IncomingMessage, response) => {
    seen.push({ method: request.method!, url: request.url! })
    response.end('<!doctype html><p>reset page</p>')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/reset-password`, seen }
}

const forgot = (app: FastifyInstance, email: string) => postJson(app, '/api/auth/password/forgot', { email })
const reset = (app: FastifyInstance, body: Record<string, string>) => postJson(app, '/api/auth/password/reset', { new_password: NEW_PASSWORD, ...body })
const adminReset = (app: FastifyInstance, token: string, id: number, body: unknown = { reason: 'ticket 4711: locked out' }) => postJson(app, `/api/admin/users/${id}/password-reset`, body, { authorization: `Bearer ${token}` })
const inspect = async (app: FastifyInstance, token: string) => (await postJson(app, '/api/auth/password/reset/inspect', { token })).json()

t.test('a forgotten password', async (t) => {
  const inbox = await startInbox(t)
  const page = await frontEnd(t)
  const logLines: string[] = []
  const clock = new TestClock()
  const app = await build(t, { clock, logLines, env: { SMTP_URL: inbox.url, APP_RESET_URL: page.url } })

  t.test('by the link: GET and HEAD of it spend nothing, the POST of its fragment\'s token sets the password and ends every session', async (t) => {
    const first = await login(app)
    const user = first.user
    const second = await login(app, user)
    const res = await forgot(app, user.email.toUpperCase())
    t.equal(res.statusCode, 202)
    t.same(res.json(), {})

    const mail = await inbox.next()
    t.match(mail.to, { text: user.email })
    t.equal(mail.subject, 'Reset your password')
    const token = tokenOf(mail)
    t.ok(mail.text?.includes(`${page.url}#token=${token}`), 'the link is APP_RESET_URL with the token in the fragment')
    t.ok(typeof mail.html === 'string' && mail.html.includes(`href="${page.url}#token=${token}"`), 'the HTML has the same link')
    t.match(codeOf(mail), /^[0-9]{6}$/)

    // What a mail scanner does with the link: the fragment never leaves the client.
    for (const method of ['GET', 'HEAD']) t.equal((await fetch(`${page.url}#token=${token}`, { method })).status, 200)
    t.same(page.seen, [{ method: 'GET', url: '/reset-password' }, { method: 'HEAD', url: '/reset-password' }], 'the front end saw no token')
    for (const method of ['GET', 'HEAD'] as const) {
      t.equal((await app.inject({ method, url: `/api/auth/password/reset?token=${token}` })).statusCode, 404, `${method} of the API spends nothing`)
    }
    t.match(await inspect(app, token), { valid: true, expires_at: String }, 'still good after all of that')

    t.match((await reset(app, { token, new_password: 'short' })).json(), { status: 400, code: 'validation_failed', errors: [{ field: 'new_password' }] })
    t.match(await inspect(app, token), { valid: true }, 'a refused password spends nothing')

    t.equal((await reset(app, { token })).statusCode, 204)
    t.match(await inspect(app, token), { valid: false })
    t.match((await reset(app, { token })).json(), { status: 400, code: 'reset_token_invalid' }, 'once only')
    for (const session of [first, second]) {
      t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${session.access}` } })).statusCode, 401, 'an old session is over')
      t.equal((await postJson(app, '/api/token/refresh', { refresh: session.refresh })).statusCode, 401)
    }
    t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).statusCode, 401, 'the old password is gone')
    const signedIn = await postJson(app, '/api/auth/login', { identifier: user.username, password: NEW_PASSWORD })
    t.equal(signedIn.statusCode, 200, 'the new one signs in; the reset itself signed nobody in')
    const row = await app.db.selectFrom('users').select('email_verified_at').where('id', '=', user.id).executeTakeFirstOrThrow()
    t.type(row.email_verified_at, Date, 'the address counts as verified')

    const notice = await inbox.next()
    t.equal(notice.subject, 'Your password was reset')
    t.match(notice.to, { text: user.email })
    t.match(notice.text, new RegExp(`account ${user.username} was reset`))

    const events = await auditEvents(app, user.id, ['event', 'outcome'], { event: 'password_reset' })
    t.same(events, [{ event: 'password_reset', outcome: 'success' }])
    const leaked = logLines.filter((line) => !line.includes('"url":"/api/auth/password/reset?token=') && (line.includes(token) || line.includes(codeOf(mail))))
    t.same(leaked, [], 'neither the token nor the code is ever logged (but for the URL the test itself put the token in)')
    await app.outbox.work()
    const outbox = await app.db.selectFrom('mail_outbox').selectAll().execute()
    t.same(outbox, [], 'sent mail leaves the outbox')
  })

  t.test('by the code: five wrong codes kill it, the sixth try is refused even with the right code, the link beside it stays good; a new mail after a minute works', async (t) => {
    const user = await register(app)
    await forgot(app, user.email)
    const mail = await inbox.next()
    const code = codeOf(mail)
    const wrong = code === '000000' ? '111111' : '000000'
    for (let i = 0; i < 5; i++) t.match((await reset(app, { email: user.email, code: wrong })).json(), { status: 400, code: 'reset_token_invalid' })
    t.match((await reset(app, { email: user.email, code })).json(), { status: 400, code: 'reset_token_invalid' }, 'dead after five wrong codes')
    // Whoever typed them knew only the address: the owner's link is not theirs to kill (issue 26, item 4).
    t.match(await inspect(app, tokenOf(mail)), { valid: true }, 'the link of the same mail is still good')

    const before = inbox.mails.length
    t.equal((await forgot(app, user.email)).statusCode, 202)
    await app.outbox.work()
    t.equal(inbox.mails.length, before, 'a second request within the minute sends nothing')
    t.equal(await app.outbox.waiting(), 0, 'and is dropped, silently')
    clock.advance(61)
    await forgot(app, user.email)
    const fresh = await inbox.next()
    t.equal(inbox.mails.length, before + 1)
    t.equal((await reset(app, { email: user.email, code: codeOf(fresh) })).statusCode, 204)
    t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: NEW_PASSWORD })).statusCode, 200)
    await inbox.next() // the notice
    t.match((await reset(app, { email: user.email, code: codeOf(fresh), token: tokenOf(fresh) })).json(), { status: 400, errors: [{ field: 'token' }] }, 'a link or a code, not both')
  })

  t.test('an operator sends the reset mail (the admin API): the link and code reach only the user\'s inbox; each refusal a 4xx', async (t) => {
    const ops = await operator(app)
    const user = await register(app)
    const res = await adminReset(app, ops.token, user.id)
    t.equal(res.statusCode, 202)
    t.same(res.json(), {}, 'nothing of the mail in the answer')
    const mail = await inbox.next()
    t.match(mail.to, { text: user.email })
    const token = tokenOf(mail)
    t.match((await adminReset(app, ops.token, user.id)).json(), { status: 409, code: 'mail_limit_reached' }, 'the per-account limit holds for operators too, and tells them')

    const trail = await auditEvents(app, user.id, ['event', 'detail'], { event: 'user_password_reset_mailed' })
    t.same(trail, [{ event: 'user_password_reset_mailed', detail: { client_id: ops.id, reason: 'ticket 4711: locked out' } }], 'audited once, with the operator and the reason')
    const everything = JSON.stringify(await app.db.selectFrom('audit_events').selectAll().execute()) + JSON.stringify(await app.db.selectFrom('mail_outbox').selectAll().execute()) + logLines.join('\n')
    t.notOk(everything.includes(token), 'the token is in no audit event, outbox row or log line')
    t.equal((await reset(app, { token })).statusCode, 204, 'the link works as a forgot mail\'s does')
    await inbox.next() // the notice

    const disabled = await register(app)
    t.equal((await postJson(app, `/api/admin/users/${disabled.id}/disable`, { reason: 'x' }, { authorization: `Bearer ${ops.token}` })).statusCode, 200)
    t.match((await adminReset(app, ops.token, disabled.id)).json(), { status: 409, code: 'user_disabled' })
    const deleted = await register(app)
    t.equal((await app.inject({ method: 'DELETE', url: `/api/admin/users/${deleted.id}?reason=x`, headers: { authorization: `Bearer ${ops.token}` } })).statusCode, 204)
    t.match((await adminReset(app, ops.token, deleted.id)).json(), { status: 409, code: 'user_deleted' })
    t.match((await adminReset(app, ops.token, 2_000_000_000)).json(), { status: 404, code: 'not_found' })
    t.match((await adminReset(app, ops.token, disabled.id, {})).json(), { status: 400, code: 'validation_failed', errors: [{ field: 'reason' }] })
    const reader = await operator(app, ['admin:users:read'])
    t.match((await adminReset(app, reader.token, disabled.id)).json(), { status: 403, code: 'insufficient_scope' })
    await app.outbox.work()
    t.equal(await app.outbox.waiting(), 0)
    t.equal(inbox.mails.length, inbox.mails.indexOf(mail) + 2, 'no mail for any refused one')
  })

  t.test('at most five mails an hour to one account, whatever is asked; the answer stays 202, the log says what was held back', async (t) => {
    const user = await register(app)
    const start = inbox.mails.length
    const logged = logLines.length
    for (let i = 0; i < 7; i++) {
      t.equal((await forgot(app, user.email)).statusCode, 202)
      await app.outbox.work()
      clock.advance(61)
    }
    t.equal(inbox.mails.length - start, 5)
    const heldBack = logLines.slice(logged).map((line) => JSON.parse(line)).filter((entry) => /^mail dropped: the per-account mail limit/.test(entry.msg))
    t.same(heldBack.map((entry) => ({ kind: entry.kind, userId: entry.userId })), [{ kind: 'password_reset', userId: user.id }, { kind: 'password_reset', userId: user.id }], 'each of the two held back, with the account (never its address) in the log')
    inbox.mails.splice(start)
  })

  t.test('an address of no account: the same answer, in about the same time, and no mail', async (t) => {
    const user = await register(app)
    const sent = inbox.mails.length
    const unknown = uniqueUser('nobody').email
    t.same((await forgot(app, unknown)).json(), {})
    await app.outbox.work()
    t.equal(inbox.mails.length, sent, 'nothing is sent')
    t.equal(await app.outbox.waiting(), 0, 'and nothing waits')

    // The request path is one insert either way: the medians within 20 %. 150 pairs, as the
    // mailed code's timing test takes: 60 gave 1.21 once in CI, with three test files beside it
    // making each 1.3 ms request take 12-14 ms (alone: 1.01 and 1.03).
    const forgotOf = (email: () => string) => async () => t.equal((await forgot(app, email())).statusCode, 202)
    const { ratio, a: known, b: none } = await pairedRatio(forgotOf(() => user.email), forgotOf(() => uniqueUser('nobody').email), { pairs: 150 })
    // The worker on its own schedule meanwhile, as in a deployment; then every job is done.
    await app.outbox.work()
    t.equal(inbox.mails.length, sent + 1, 'one mail for the account (the limit takes the rest), none for the others')
    t.ok(ratio > 0.8 && ratio < 1.2, `median ${known.toFixed(2)} ms for an account, ${none.toFixed(2)} ms for none (the pairs' median ratio ${ratio.toFixed(2)})`)
    inbox.mails.splice(sent)
  })

  t.test('while SMTP is down every request is still 202, and each mail arrives once SMTP is back', async (t) => {
    const users = [await register(app), await register(app), await register(app)]
    await inbox.stop()
    for (const user of users) t.equal((await forgot(app, user.email)).statusCode, 202)
    await app.outbox.work()
    const waiting = await app.db.selectFrom('mail_outbox').select(['sealed', 'attempts', 'last_error', 'prepared']).execute()
    t.equal(waiting.length, 3, 'the three wait in the outbox')
    t.ok(waiting.every((job) => job.attempts >= 1 && job.prepared && /ECONNREFUSED/.test(job.last_error ?? '')), 'each tried and refused')
    t.notOk(waiting.some((job) => users.some((user) => job.sealed.includes(user.email) || job.sealed.includes(user.username))), 'sealed: no address, name or secret in clear')
    const before = inbox.mails.length
    await inbox.start()
    const arrived = [await inbox.next(15_000), await inbox.next(15_000), await inbox.next(15_000)]
    t.same(arrived.map((mail) => (mail.to as { text: string }).text).sort(), users.map((user) => user.email).sort())
    await app.outbox.work()
    t.equal(inbox.mails.length, before + 3, 'each once')
    t.equal(await app.outbox.waiting(), 0)
  })
})

t.test('the OpenAPI document lists the reset with every status it answers', async (t) => {
  const app = await build(t, { env: { APP_RESET_URL: 'https://app.example.com/reset' } })
  const { paths } = (await app.inject({ url: '/docs/json' })).json()
  t.same(Object.keys(paths['/api/auth/password/forgot'].post.responses).sort(), ['202', '400', '413', '415', '429', '500', '503'])
  t.same(Object.keys(paths['/api/auth/password/reset'].post.responses).sort(), ['204', '400', '403', '413', '415', '429', '500', '503'])
  t.same(Object.keys(paths['/api/auth/password/reset/inspect'].post.responses).sort(), ['200', '400', '413', '415', '429', '500', '503'])
  t.same(Object.keys(paths['/api/admin/users/{id}/password-reset'].post.responses).sort(), ['202', '400', '401', '403', '404', '409', '413', '415', '500', '503'])
})

t.test('without APP_RESET_URL there is no password reset', async (t) => {
  const app = await build(t)
  t.equal((await forgot(app, 'someone@example.com')).statusCode, 404)
  t.equal((await reset(app, { token: 'x'.repeat(43) })).statusCode, 404)
  const user = await register(app)
  t.equal((await adminReset(app, (await operator(app)).token, user.id)).statusCode, 404, 'nor an operator\'s reset mail')
})
