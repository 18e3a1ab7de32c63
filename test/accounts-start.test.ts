import bcrypt from 'bcrypt'
import t from 'tap'
import { build, register } from './helper.ts'

// The timing equaliser (a bcrypt hash of the configured cost, compared against for an unknown
// account) is made at start without holding the start up; a login that comes before it is made
// waits for it, so even the very first failed login costs a full comparison.
t.test('the start does not wait for the timing equaliser, and the first logins wait for it', async (t) => {
  const app = await build(t, { env: { BCRYPT_COST: '5' } })
  const user = await register(app)
  const compared: string[] = []
  let made = (): void => {}
  const gate = new Promise<void>((resolve) => { made = resolve })
  const { createAccounts } = await t.mockImport<typeof import('../src/services/accounts/accounts.ts')>('../src/services/accounts/accounts.ts', {
    bcrypt: {
      ...bcrypt,
      compare: async (password: string, hash: string) => {
        compared.push(hash)
        return await bcrypt.compare(password, hash)
      },
      // Only the equaliser is hashed here: held until the test lets it finish.
      hash: async (password: string, cost: number) => {
        await gate
        return await bcrypt.hash(password, cost)
      }
    }
  })
  const accounts = await createAccounts({ db: app.db, sessions: app.sessions, clock: app.clock, config: app.config, audit: app.audit })
  t.pass('the accounts are ready while the equaliser is still being made')

  const unknown = accounts.authenticate('nobody-here', 'whatever password')
  const known = accounts.authenticate(user.username, user.password)
  unknown.catch(() => {})
  const settled = await Promise.race([
    Promise.allSettled([unknown, known]).then(() => true),
    new Promise((resolve) => setTimeout(() => resolve(false), 200))
  ])
  t.equal(settled, false, 'neither login answers before the equaliser exists')
  t.same(compared, [], 'nothing is compared before it exists')

  made()
  await t.rejects(unknown, { code: 'INVALID_CREDENTIALS' })
  t.ok(compared.some((hash) => bcrypt.getRounds(hash) === 5), 'the unknown account cost a comparison at the configured cost')
  t.equal((await known).user.id, user.id, 'the known account signs in')
})
