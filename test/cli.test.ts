import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { runCli } from '../src/cli.ts'
import { freshDatabase, SECRET_KEY } from './helper.ts'

const run = promisify(execFile)

t.test('npm run migrate applies, reports up to date, and migrate:down undoes', async (t) => {
  const env = { ...await freshDatabase(t), SECRET_KEY }
  const all = 'applied: 0001-initial, 0002-next-signing-key, 0003-audit-events, 0004-session-notifications, 0005-refresh-function, 0006-pinned-search-path'
  t.match(await runCli(['migrate'], env), { code: 0, stdout: all })
  t.match(await runCli(['migrate'], env), { code: 0, stdout: 'database is up to date' })
  t.match(await runCli(['migrate:down'], env), { code: 0, stdout: 'undone: 0006-pinned-search-path' })
  t.match(await runCli(['migrate:down'], env), { code: 0, stdout: 'undone: 0005-refresh-function' })
  t.match(await runCli(['migrate:down'], env), { code: 0, stdout: 'undone: 0004-session-notifications' })
  t.match(await runCli(['migrate:down'], env), { code: 0, stdout: 'undone: 0003-audit-events' })
  t.match(await runCli(['migrate:down'], env), { code: 0, stdout: 'undone: 0002-next-signing-key' })
  t.match(await runCli(['migrate:down'], env), { code: 0, stdout: 'undone: 0001-initial' })
  t.match(await runCli(['migrate:down'], env), { code: 0, stdout: 'nothing to undo' })
  t.match(await runCli(['migrate'], env), { code: 0, stdout: all }, 'down then up again')
})

t.test('a bad variable exits 1 naming it', async (t) => {
  t.match(await runCli(['migrate'], { DB_ENGINE: 'oracle' }), { code: 1, stderr: /^authgate: DB_ENGINE must be one of pglite, postgres, not "oracle"$/ })
})

t.test('the command line: an unknown command prints the usage and exits 2; a command prints its result', async (t) => {
  await t.rejects(run(process.execPath, ['src/cli.ts', 'frobnicate'], { env: process.env }), { code: 2, stderr: /usage: node src\/cli.ts <command>/ })
  const { stdout } = await run(process.execPath, ['src/cli.ts', 'migrate'], { env: { ...process.env, ...await freshDatabase(t), SECRET_KEY } })
  t.equal(stdout, 'applied: 0001-initial, 0002-next-signing-key, 0003-audit-events, 0004-session-notifications, 0005-refresh-function, 0006-pinned-search-path\n')
})
