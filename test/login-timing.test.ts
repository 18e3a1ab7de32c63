import bcrypt from 'bcrypt'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { build, register } from './helper.ts'

// "About the same time" without timing anything: every failed login, whatever its cause,
// costs at least one bcrypt comparison against a hash of the configured cost.
t.test('every failed login costs a bcrypt comparison of the configured cost', async (t) => {
  const app = await build(t, { env: { BCRYPT_COST: '5' } })
  const compared: string[] = []
  let duringRehash = async (): Promise<void> => {}
  const { createAccounts } = await t.mockImport<typeof import('../src/services/accounts/accounts.ts')>('../src/services/accounts/accounts.ts', {
    bcrypt: {
      ...bcrypt,
      compare: async (password: string, hash: string) => {
        compared.push(hash)
        return await bcrypt.compare(password, hash)
      },
      hash: async (password: string, cost: number) => {
        await duringRehash()
        return await bcrypt.hash(password, cost)
      }
    }
  })
  const accounts = await createAccounts({ db: app.db, sessions: app.sessions, clock: app.clock, config: app.config, audit: app.audit })
  const user = await register(app)
  const inactive = await register(app)
  await app.db.updateTable('users').set({ is_active: false }).where('id', '=', inactive.id).execute()
  // An account whose hash dates from before BCRYPT_COST was raised from 4 to 5.
  const older = await register(app)
  await app.db.updateTable('users').set({ password_hash: await bcrypt.hash(older.password, 4) }).where('id', '=', older.id).execute()

  // An account imported from Django, with a PBKDF2 hash Django made (test/fixtures/django).
  const imported = await register(app)
  const [django] = JSON.parse(await readFile(join(import.meta.dirname, 'fixtures', 'django', 'users.json'), 'utf8')) as Array<{ fields: { password: string } }>
  await app.db.updateTable('users').set({ password_hash: django!.fields.password }).where('id', '=', imported.id).execute()

  const cases: Array<[string, string, string]> = [
    ['unknown username', 'nobody-here', 'whatever password'],
    ['unknown email', 'nobody@example.com', 'whatever password'],
    ['wrong password', user.username, 'not the password'],
    ['password over 72 bytes', user.username, user.password + 'x'.repeat(72)],
    ['inactive account', inactive.username, inactive.password],
    ['wrong password, hash of a lower cost', older.username, 'not the password'],
    ['wrong password, hash imported from Django', imported.username, 'not the password']
  ]
  for (const [why, identifier, password] of cases) {
    compared.length = 0
    await t.rejects(accounts.authenticate(identifier, password), { code: 'INVALID_CREDENTIALS' }, why)
    t.ok(compared.some((hash) => bcrypt.getRounds(hash) === 5), `${why}: a comparison at the configured cost`)
  }

  t.test('the upgrade of a hash never overwrites a password changed meanwhile, and the old password starts no session', async (t) => {
    const changed = await bcrypt.hash('a password set by a reset', 5)
    duringRehash = async () => {
      await app.db.updateTable('users').set({ password_hash: changed }).where('id', '=', older.id).execute()
    }
    const proof = await accounts.authenticate(older.username, older.password)
    await t.rejects(app.sessions.start(proof.credential, { userAgent: null, ip: null }, { aal: 'aal1', amr: ['pwd'], auth_time: 0 }), { code: 'INVALID_CREDENTIALS' })
    const row = await app.db.selectFrom('users').select('password_hash').where('id', '=', older.id).executeTakeFirstOrThrow()
    t.equal(row.password_hash, changed, 'the reset stands')
  })
})
