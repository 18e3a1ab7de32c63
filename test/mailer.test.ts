import t from 'tap'
import type { Mail, Mailer } from '../src/services/mail/mailer.ts'
import { build, postJson, register } from './helper.ts'
import { startInbox } from './smtp.ts'

const mail: Mail = { to: 'alice@example.com', subject: 'Your code', text: 'Your code is 123456.', html: '<p>Your code is <b>123456</b>.</p>' }

t.test('with SMTP_URL mail goes to the SMTP server, in both forms, from MAIL_FROM', async (t) => {
  const inbox = await startInbox(t)
  const app = await build(t, { env: { SMTP_URL: inbox.url, MAIL_FROM: 'authgate <auth@example.com>' } })
  t.equal(app.mailer.delivers, true)
  await app.mailer.send(mail)
  const received = await inbox.next()
  t.match(received.from?.value, [{ name: 'authgate', address: 'auth@example.com' }])
  t.equal(received.subject, 'Your code')
  t.match(received.to, { text: 'alice@example.com' })
  t.equal(received.text?.trim(), 'Your code is 123456.')
  t.equal(received.html, '<p>Your code is <b>123456</b>.</p>')
})

t.test('MAIL_FROM defaults to no-reply at the public URL\'s host', async (t) => {
  const inbox = await startInbox(t)
  const app = await build(t, { env: { SMTP_URL: inbox.url, PUBLIC_URL: 'https://auth.example.com' } })
  await app.mailer.send(mail)
  t.match((await inbox.next()).from?.value, [{ name: 'authgate', address: 'no-reply@auth.example.com' }])
})

t.test('while SMTP is down a send fails, and says so', async (t) => {
  const inbox = await startInbox(t)
  const app = await build(t, { env: { SMTP_URL: inbox.url } })
  await inbox.stop()
  await t.rejects(app.mailer.send(mail), /ECONNREFUSED/)
})

/** The log lines of mail that was not sent. */
const unsent = (logLines: string[]): Array<Record<string, unknown>> =>
  logLines.map((l) => JSON.parse(l)).filter((l) => /^mail not sent: SMTP_URL is not set/.test(l.msg))

t.test('without SMTP_URL outside production the whole mail is in the log: a reset and a code sign-in are finished from it', async (t) => {
  const logLines: string[] = []
  const app = await build(t, { logLines, env: { NODE_ENV: 'development', APP_RESET_URL: 'http://localhost:5173/reset-password', EMAIL_SIGN_IN: 'true' } })
  t.equal(app.mailer.delivers, false)
  const warnings = (): Array<Record<string, unknown>> => logLines.map((l) => JSON.parse(l)).filter((l) => /^SMTP_URL is not set: mail is written to the log/.test(l.msg))
  t.same(warnings(), [], 'no warning before there is mail: the CLI\'s commands send none')
  const user = await register(app)

  t.equal((await postJson(app, '/api/auth/password/forgot', { email: user.email })).statusCode, 202)
  await app.outbox.work()
  const [resetMail] = unsent(logLines)
  t.match(resetMail, { level: 30, to: user.email, subject: 'Reset your password', text: /^Someone, hopefully you, asked to reset the password/ })
  const token = /reset-password#token=([A-Za-z0-9_-]{43})/.exec(String(resetMail?.text))?.[1]
  t.ok(token !== undefined && /code[^0-9]*[0-9]{6}/.test(String(resetMail?.text)), 'the link and the code')
  const reset = await postJson(app, '/api/auth/password/reset', { token, new_password: 'a brand new passphrase 42' })
  t.equal(reset.statusCode, 204, 'the reset is finished with the link from the log')

  t.equal((await postJson(app, '/api/auth/email/sign-in', { email: user.email })).statusCode, 202)
  await app.outbox.work()
  const codeMail = unsent(logLines).find((l) => l.subject === 'Your sign-in code')
  const code = /: ([0-9]{6})\b/.exec(String(codeMail?.text))?.[1]
  const signedIn = await postJson(app, '/api/auth/email/sign-in/verify', { email: user.email, code })
  t.equal(signedIn.statusCode, 200, 'the sign-in is finished with the code from the log')
  t.type(signedIn.json().access, 'string')
  t.match(warnings(), [{ level: 40, msg: /links and codes included/ }], 'one warning, with the first mail')
  t.equal(warnings().length, 1)
})

t.test('without SMTP_URL in production a mail\'s line holds its address and subject only', async (t) => {
  const logLines: string[] = []
  const app = await build(t, { logLines, env: { NODE_ENV: 'production', PUBLIC_URL: 'https://auth.example.com' } })
  t.equal(app.mailer.delivers, false)
  await app.mailer.send(mail)
  t.same(unsent(logLines).map(({ to, subject, text, msg }) => ({ to, subject, text, msg })), [
    { to: 'alice@example.com', subject: 'Your code', text: undefined, msg: 'mail not sent: SMTP_URL is not set' }
  ])
  t.notMatch(logLines.join('\n'), /123456/, 'never the body, which holds the secrets')
  t.notMatch(logLines.join('\n'), /links and codes included/, 'no warning: nothing secret is written')
})

t.test('a test puts its own mailer in place through the composition root', async (t) => {
  const sent: Mail[] = []
  const mailer: Mailer = { delivers: true, send: async (m) => { sent.push(m) }, close: async () => {} }
  const app = await build(t, { overrides: { mailer } })
  t.equal(app.mailer, mailer)
  await app.mailer.send(mail)
  t.same(sent, [mail])
})
