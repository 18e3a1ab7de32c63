import t from 'tap'
import { build, register, TestClock } from './helper.ts'

// The one service of every single-use secret (src/services/one-time-codes.ts), on both engines.
t.test('single-use secrets', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const codes = app.oneTimeCodes
  const user = await register(app)
  const issue = (options: { ttlS?: number, maxAttempts?: number } = {}) =>
    codes.issue({ purpose: 'password_reset', userId: user.id, ttlS: options.ttlS ?? 600, with: { token: true, code: true }, maxAttempts: options.maxAttempts, detail: { email: user.email } })

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

  t.test('a wrong code counts against it; the fifth wrong one kills it', async (t) => {
    const { code } = await issue()
    const wrong = code === '000000' ? '000001' : '000000'
    for (let i = 0; i < 4; i++) t.equal(await codes.spendCode('password_reset', user.id, wrong), undefined)
    t.match(await codes.spendCode('password_reset', user.id, code!), { userId: user.id }, 'the right one after four wrong')
    const again = await issue()
    for (let i = 0; i < 5; i++) await codes.spendCode('password_reset', user.id, wrong)
    t.equal(await codes.spendCode('password_reset', user.id, again.code!), undefined, 'after five wrong, not even the right one')
    t.equal(await codes.spendToken('password_reset', again.token!), undefined, 'nor its token')
  })

  t.test('a new one cancels the older of its purpose', async (t) => {
    const older = await issue()
    const newer = await issue()
    t.equal(await codes.spendToken('password_reset', older.token!), undefined)
    // (One time in a million the two codes are the same: then the newer one would take it.)
    if (older.code !== newer.code) t.equal(await codes.spendCode('password_reset', user.id, older.code!), undefined, 'nor its code')
    t.match(await codes.spendToken('password_reset', newer.token!), { userId: user.id })
  })

  t.test('an expired one is nothing', async (t) => {
    const { token, code } = await issue({ ttlS: 60 })
    clock.advance(61)
    t.equal(await codes.inspect('password_reset', token!), undefined)
    t.equal(await codes.spendToken('password_reset', token!), undefined)
    t.equal(await codes.spendCode('password_reset', user.id, code!), undefined)
  })

  t.test('parallel attempts with the right code spend it once, and parallel guesses are each counted', async (t) => {
    const { code } = await issue({ maxAttempts: 20 })
    const spent = await Promise.all(Array.from({ length: 8 }, () => codes.spendCode('password_reset', user.id, code!)))
    t.equal(spent.filter((s) => s !== undefined).length, 1)
    const next = await issue({ maxAttempts: 20 })
    const wrong = next.code === '999999' ? '999998' : '999999'
    await Promise.all(Array.from({ length: 6 }, () => codes.spendCode('password_reset', user.id, wrong)))
    const row = await app.db.selectFrom('one_time_codes').select('attempts').where('id', '=', next.id).executeTakeFirstOrThrow()
    t.equal(row.attempts, 6)
  })
})
