import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { migrations } from '../migrations/index.ts'
import { runCli } from '../src/cli.ts'
import { freshDatabase, SECRET_KEY } from './helper.ts'

const run = promisify(execFile)
const MIGRATIONS = Object.keys(migrations)

t.test('npm run migrate applies, reports up to date, and migrate:down undoes', async (t) => {
  // A database the migrations have not run on.
  const env = { ...await freshDatabase(t, { migrated: false }), SECRET_KEY }
  const all = `applied: ${MIGRATIONS.join(', ')}`
  t.match(await runCli(['migrate'], env), { code: 0, stdout: all })
  t.match(await runCli(['migrate'], env), { code: 0, stdout: 'database is up to date' })
  // Every migration's down, the newest first.
  for (const name of [...MIGRATIONS].reverse()) t.match(await runCli(['migrate:down'], env), { code: 0, stdout: `undone: ${name}` })
  t.match(await runCli(['migrate:down'], env), { code: 0, stdout: 'nothing to undo' })
  t.match(await runCli(['migrate'], env), { code: 0, stdout: all }, 'down then up again')
})

t.test('a bad variable exits 1 naming it', async (t) => {
  t.match(await runCli(['migrate'], { DB_ENGINE: 'oracle' }), { code: 1, stderr: /^authgate: DB_ENGINE must be one of pglite, postgres, not "oracle"$/ })
})

t.test('the command line: an unknown command prints the usage and exits 2; a command prints its result', async (t) => {
  await t.rejects(run(process.execPath, ['src/cli.ts', 'frobnicate'], { env: process.env }), { code: 2, stderr: /usage: node src\/cli.ts <command>/ })
  const { stdout } = await run(process.execPath, ['src/cli.ts', 'migrate'], { env: { ...process.env, ...await freshDatabase(t, { migrated: false }), SECRET_KEY } })
  t.equal(stdout, `applied: ${MIGRATIONS.join(', ')}\n`)
})
