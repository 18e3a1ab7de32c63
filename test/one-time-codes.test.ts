import t from 'tap'
import { createCleanup } from '../src/services/cleanup.ts'
import type { CodePurpose } from '../src/services/one-time-codes.ts'
import { build, register, TestClock } from './helper.ts'

// The one service of every single-use secret (src/services/one-time-codes.ts), on both engines.
t.test('single-use secrets', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const codes = app.oneTimeCodes
  const user = await register(app)
  const issue = (options: { ttlS?: number, maxAttempts?: number } = {}) =>
    codes.issue({ purpose: 'password_reset', userId: user.id, ttlS: options.ttlS ?? 600, with: { token: true, code: true }, maxAttempts: options.maxAttempts, detail: { email: user.email } })
  const tryCode = (code: string, email = user.email) => codes.tryCode('password_reset', email, code)
  const wrongFor = (code: string | undefined): string => code === '000000' ? '000001' : '000000'

  t.test('a token of 256 bits and a code of six digits, kept only as hashes', async (t) => {
    const issued = await issue()
    t.match(issued.token, /^[A-Za-z0-9_-]{43}$/)
    t.match(issued.code, /^[0-9]{6}$/)
    const row = await app.db.selectFrom('one_time_codes').selectAll().where('id', '=', issued.id).executeTakeFirstOrThrow()
    t.notMatch(JSON.stringify(row), new RegExp(`${issued.token!}|"${issued.code!}"`), 'neither is in the row')
    t.match(row, { purpose: 'password_reset', user_id: user.id, attempts: 0, max_attempts: 5, consumed_at: null, detail: { email: user.email } })
  })

  t.test('a token is spent once; inspecting it spends nothing', async (t) => {
    const { token } = await issue()
    t.match(await codes.inspect('password_reset', token!), { userId: user.id })
    t.match(await codes.inspect('password_reset', token!), { userId: user.id }, 'still good after a look')
    t.match(await codes.spendToken('password_reset', token!), { userId: user.id, detail: { email: user.email } })
    t.equal(await codes.spendToken('password_reset', token!), undefined, 'the second time: nothing')
    t.equal(await codes.inspect('password_reset', token!), undefined)
    t.equal(await codes.spendToken('email_verification', (await issue()).token!), undefined, 'a token of another purpose: nothing')
  })

  t.test('a code is tried by the address it was mailed to, and spent apart, once', async (t) => {
    const { id, code } = await issue()
    t.match(await tryCode(code!), { id, userId: user.id }, 'the right one is found')
    t.match(await tryCode(code!), { id }, 'a try spends nothing')
    t.equal(await tryCode(code!, 'nobody-at-all@example.com'), undefined, 'another address: nothing')
    t.equal(await codes.spend('password_reset', id), true)
    t.equal(await codes.spend('password_reset', id), false, 'spent once')
    t.equal(await tryCode(code!), undefined)
  })

  t.test('a wrong code counts against it; the fifth wrong one kills the code, never the link beside it', async (t) => {
    const { code } = await issue()
    for (let i = 0; i < 4; i++) t.equal(await tryCode(wrongFor(code)), undefined)
    t.match(await tryCode(code!), { userId: user.id }, 'the right one after four wrong')
    const again = await issue()
    for (let i = 0; i < 5; i++) await tryCode(wrongFor(again.code))
    t.equal(await tryCode(again.code!), undefined, 'after five wrong, not even the right one')
    // Whoever types codes with someone's address must not kill the link in their mail (issue 26, item 4).
    t.match(await codes.inspect('password_reset', again.token!), { userId: user.id }, 'the link is still good')
    t.match(await codes.spendToken('password_reset', again.token!), { userId: user.id }, 'and spends')
  })

  t.test('a secret without a code (an mfa_token) ends with its tries, each counted before it is judged', async (t) => {
    const challenge = await codes.issue({ purpose: 'mfa_challenge', userId: user.id, ttlS: 300, maxAttempts: 3, with: { token: true }, keepOthers: true })
    const tries = await Promise.all(Array.from({ length: 20 }, () => codes.attempt('mfa_challenge', challenge.id)))
    t.equal(tries.filter(Boolean).length, 3, 'of twenty at once, three are let through')
    t.equal(await codes.inspect('mfa_challenge', challenge.token!), undefined, 'then it is dead')
    await codes.takeBack('mfa_challenge', challenge.id)
    t.match(await codes.inspect('mfa_challenge', challenge.token!), { userId: user.id }, 'a try taken back is one more left')
    t.equal(await codes.spend('mfa_challenge', challenge.id), true, 'a try let through spends it')
  })

  t.test('a new one cancels the older of its purpose', async (t) => {
    const older = await issue()
    const newer = await issue()
    t.equal(await codes.spendToken('password_reset', older.token!), undefined)
    // (One time in a million the two codes are the same: then the newer one would take it.)
    if (older.code !== newer.code) t.equal(await tryCode(older.code!), undefined, 'nor its code')
    t.match(await codes.spendToken('password_reset', newer.token!), { userId: user.id })
  })

  t.test('an expired one is nothing', async (t) => {
    const { id, token, code } = await issue({ ttlS: 60 })
    clock.advance(61)
    t.equal(await codes.inspect('password_reset', token!), undefined)
    t.equal(await codes.spendToken('password_reset', token!), undefined)
    t.equal(await tryCode(code!), undefined)
    t.equal(await codes.spend('password_reset', id), false)
  })

  t.test('spent and expired secrets are pruned once the per-account mail limit no longer counts them; open ones stay', async (t) => {
    const other = await register(app)
    const cleanup = createCleanup({ db: app.db, config: app.config, clock, audit: app.audit, log: app.log })
    const of = (purpose: CodePurpose, ttlS: number) => codes.issue({ purpose, userId: other.id, ttlS, with: { code: true }, keepOthers: true })
    const spent = await of('email_sign_in', 600)
    await codes.spend('email_sign_in', spent.id)
    const expiring = await of('email_sign_in', 600)
    const open = await of('email_verification', 86_400)
    const left = async (): Promise<string[]> => (await app.db.selectFrom('one_time_codes').select('id').where('user_id', '=', other.id).orderBy('created_at').execute()).map((row) => row.id)
    clock.advance(30 * 60)
    await cleanup.flush()
    t.same(await left(), [spent.id, expiring.id, open.id], 'within the hour the mail limit counts them, spent or expired')
    clock.advance(31 * 60)
    t.ok((await cleanup.flush()).oneTimeCodes >= 2)
    t.same(await left(), [open.id], 'then only the open one stays')
    // The tries of an address are kept while a code they count for may be open: the longest lifetime of a mailed code (a day).
    await codes.tryCode('email_sign_in', 'pruned@example.com', '123456')
    const tried = async (): Promise<number> => (await app.db.selectFrom('mail_code_tries').select('tries').where('email', '=', 'pruned@example.com').execute()).length
    clock.advance(23 * 3600)
    await cleanup.flush()
    t.equal(await tried(), 1)
    clock.advance(3600 + 1)
    await cleanup.flush()
    t.equal(await tried(), 0, 'then they go')
  })

  t.test('parallel spends of one secret: one; parallel guesses are each counted', async (t) => {
    const { id, code } = await issue({ maxAttempts: 20 })
    const found = await Promise.all(Array.from({ length: 20 }, () => tryCode(code!)))
    t.equal(found.filter((f) => f?.id === id).length, 20, 'twenty tries of the right code find it')
    const spent = await Promise.all(Array.from({ length: 20 }, () => codes.spend('password_reset', id)))
    t.equal(spent.filter(Boolean).length, 1, 'and one spends it')
    const tries = async (email = user.email): Promise<number | undefined> => (await app.db.selectFrom('mail_code_tries').select('tries').where('purpose', '=', 'password_reset').where('email', '=', email).executeTakeFirst())?.tries
    const next = await issue({ maxAttempts: 20 })
    t.equal(await tries(), undefined, 'a new mail starts the count again')
    await Promise.all(Array.from({ length: 6 }, () => tryCode(wrongFor(next.code))))
    t.equal(await tries(), 6)
    const dead = await issue({ maxAttempts: 5 })
    const answers = await Promise.all(Array.from({ length: 30 }, () => tryCode(dead.code!)))
    t.equal(await tries(), 5, 'thirty at once: five counted, the rest found no tries left')
    t.equal(answers.filter((found) => found !== undefined).length, 5, 'and only those five were judged (each found the right code)')
    // An address of no account is counted alike.
    await Promise.all(Array.from({ length: 8 }, () => tryCode('123456', 'nobody-counted@example.com')))
    t.equal(await tries('NOBODY-counted@example.com'), 5, 'counted per address, whatever its case')
  })
})
