import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { freshDatabase } from './helper.ts'

const run = promisify(execFile)
const cli = (env: Record<string, string>, ...args: string[]) =>
  run(process.execPath, ['src/cli.ts', ...args], { env: { ...process.env, ...env, LOG_LEVEL: 'silent' } })

t.test('npm run migrate applies, reports up to date, and migrate:down undoes', async (t) => {
  const database = await freshDatabase(t)
  t.match((await cli(database, 'migrate')).stdout, /applied: 0001-initial/)
  t.match((await cli(database, 'migrate')).stdout, /database is up to date/)
  t.match((await cli(database, 'migrate:down')).stdout, /undone: 0001-initial/)
  t.match((await cli(database, 'migrate:down')).stdout, /nothing to undo/)
  t.match((await cli(database, 'migrate')).stdout, /applied: 0001-initial/, 'down then up again')
})

t.test('an unknown command prints the usage and exits 2', async (t) => {
  await t.rejects(cli({}, 'frobnicate'), { code: 2, stderr: /usage: node src\/cli.ts <command>/ })
})

t.test('a bad variable exits 1 naming it', async (t) => {
  await t.rejects(cli({ DB_ENGINE: 'oracle' }, 'migrate'), { code: 1, stderr: /DB_ENGINE/ })
})
