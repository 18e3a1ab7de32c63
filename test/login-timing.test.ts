import bcrypt from 'bcrypt'
import t from 'tap'
import { build, register } from './helper.ts'

// "About the same time" without timing anything: every failed login, whatever its cause,
// costs exactly one bcrypt comparison against a hash of the configured cost.
t.test('every failed login costs one bcrypt comparison of the configured cost', async (t) => {
  const app = await build(t)
  const compared: string[] = []
  const { authenticateUser } = await t.mockImport<typeof import('../src/services/users.ts')>('../src/services/users.ts', {
    bcrypt: {
      ...bcrypt,
      compare: async (password: string, hash: string) => {
        compared.push(hash)
        return await bcrypt.compare(password, hash)
      }
    }
  })
  const user = await register(app)
  const inactive = await register(app)
  await app.db.updateTable('users').set({ is_active: false }).where('id', '=', inactive.id).execute()

  const cases: Array<[string, string, string]> = [
    ['unknown username', 'nobody-here', 'whatever password'],
    ['unknown email', 'nobody@example.com', 'whatever password'],
    ['wrong password', user.username, 'not the password'],
    ['password over 72 bytes', user.username, user.password + 'x'.repeat(72)],
    ['inactive account', inactive.username, inactive.password]
  ]
  for (const [why, identifier, password] of cases) {
    compared.length = 0
    await t.rejects(authenticateUser(app.db, identifier, password, 4, new Date()), { code: 'INVALID_CREDENTIALS' }, why)
    t.equal(compared.length, 1, `${why}: one comparison`)
    t.equal(bcrypt.getRounds(compared[0]!), 4, `${why}: at the configured cost`)
  }
})
