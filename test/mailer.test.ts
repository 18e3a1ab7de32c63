import t from 'tap'
import type { Mail, Mailer } from '../src/services/mailer.ts'
import { build } from './helper.ts'
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

t.test('without SMTP_URL nothing is sent: one line in the log, the address and subject only', async (t) => {
  const logLines: string[] = []
  const app = await build(t, { logLines })
  t.equal(app.mailer.delivers, false)
  await app.mailer.send(mail)
  const line = logLines.map((l) => JSON.parse(l)).find((l) => l.msg === 'mail not sent: SMTP_URL is not set')
  t.match(line, { to: 'alice@example.com', subject: 'Your code' })
  t.notMatch(logLines.join('\n'), /123456/, 'never the body, which holds the secrets')
})

t.test('a test puts its own mailer in place through the composition root', async (t) => {
  const sent: Mail[] = []
  const mailer: Mailer = { delivers: true, send: async (m) => { sent.push(m) }, close: async () => {} }
  const app = await build(t, { overrides: { mailer } })
  t.equal(app.mailer, mailer)
  await app.mailer.send(mail)
  t.same(sent, [mail])
})
