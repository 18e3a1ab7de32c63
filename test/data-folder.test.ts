import { mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { build, login } from './helper.ts'

t.test('the embedded database lives in a folder of the owner\'s alone, made where DB_NAME says', {
  skip: process.env.DB_ENGINE === 'postgres' && 'the data folder is PGlite\'s'
}, async (t) => {
  const parent = await mkdtemp(join(tmpdir(), 'authgate-data-'))
  t.teardown(() => rm(parent, { recursive: true, force: true }))
  // A folder that does not exist yet, with SECRET_KEY set (so no secret file makes it first).
  const folder = join(parent, 'not', 'there', 'yet')
  const app = await build(t, { database: { DB_ENGINE: 'pglite', DB_NAME: folder } })
  await login(app)
  t.equal((await stat(folder)).mode & 0o777, 0o700, 'others can neither read nor write anything in it')
  t.ok((await readdir(join(folder, 'pglite'))).length > 0, 'PGlite wrote its files inside')
  t.same(await readdir(folder).then((names) => names.sort()), ['.gitignore', 'pglite'])
})
