import t from 'tap'
import { build, postJson, register, uniqueUser } from './helper.ts'
import { pairedRatio } from './timing.ts'

// The three endpoints that take an address and a mailed code (issue 26, item 8) tell nothing of
// the address: a wrong code for an account that has an open code of the kind (the one case
// where a try writes: it is counted) answers as a code for an address of no account does, in
// the same shape, in about the same time; and the reset looks at the code before the new
// password, so no policy answer can name the account's username. Both engines.

const WRONG = '000000'

t.test('a mailed code with someone\'s address, against one with an address of no account', async (t) => {
  const app = await build(t, { env: { APP_RESET_URL: 'http://127.0.0.1:9/reset', EMAIL_VERIFICATION: 'optional', APP_VERIFY_URL: 'http://127.0.0.1:9/verify', EMAIL_SIGN_IN: 'true' } })
  const endpoints = [
    { purpose: 'password_reset', path: '/api/auth/password/reset', body: { new_password: 'a new passphrase to set' }, answer: 'reset_token_invalid' },
    { purpose: 'email_verification', path: '/api/auth/email/verify', body: {}, answer: 'verification_token_invalid' },
    { purpose: 'email_sign_in', path: '/api/auth/email/sign-in/verify', body: {}, answer: 'sign_in_code_invalid' }
  ] as const

  for (const { purpose, path, body, answer } of endpoints) {
    t.test(path, async (t) => {
      const user = await register(app)
      // Its registration's verification mail first: made later, it would cancel the code issued here.
      await app.outbox.work()
      const nobody = uniqueUser('nobody').email
      // A new code, and a code that is not it.
      let wrong = WRONG
      const issue = async (): Promise<void> => {
        const { code } = await app.oneTimeCodes.issue({ purpose, userId: user.id, ttlS: 3600, with: { code: true }, detail: { email: user.email } })
        wrong = code === WRONG ? '111111' : WRONG
      }
      await issue()
      const tries = async (email: string) => (await app.db.selectFrom('mail_code_tries').select('tries').where('purpose', '=', purpose).where('email', '=', email).executeTakeFirst())?.tries
      for (let i = 1; i <= 3; i++) {
        const known = await postJson(app, path, { ...body, email: user.email, code: wrong })
        const unknown = await postJson(app, path, { ...body, email: nobody, code: wrong })
        t.equal(known.statusCode, 400)
        t.same(known.json(), unknown.json(), 'the same answer')
        t.match(known.json(), { code: answer })
        t.same([await tries(user.email), await tries(nobody)], [i, i], 'each try counted, the address of an account\'s and of none alike')
      }

      // A try as an attacker's first at an address: at the account, just after a mail was sent
      // (its code open, its count started again); at an address of none, a new one.
      const tryWith = (email: () => string) => async () => t.equal((await postJson(app, path, { ...body, email: email(), code: wrong })).statusCode, 400)
      const { ratio, a, b } = await pairedRatio(tryWith(() => user.email), tryWith(() => uniqueUser('nobody').email), { pairs: 150, prepare: issue })
      t.ok(ratio > 0.8 && ratio < 1.2, `median ${a.toFixed(2)} ms for an account, ${b.toFixed(2)} ms for none (the pairs' median ratio ${ratio.toFixed(2)})`)
    })
  }

  t.test('the reset looks at the code first: a new password that would be refused for the account is not said to be', async (t) => {
    const user = await register(app)
    await app.oneTimeCodes.issue({ purpose: 'password_reset', userId: user.id, ttlS: 3600, with: { code: true } })
    // The policy refuses a password equal to the username: said before the code is looked at, it
    // told which username owns the address.
    const res = await postJson(app, '/api/auth/password/reset', { email: user.email, code: WRONG, new_password: user.username })
    t.match(res.json(), { status: 400, code: 'reset_token_invalid' })
    t.same(res.json(), (await postJson(app, '/api/auth/password/reset', { email: uniqueUser('nobody').email, code: WRONG, new_password: user.username })).json())
  })
})
