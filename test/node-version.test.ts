import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { promisify } from 'node:util'
import t from 'tap'

const run = promisify(execFile)
// The machines ship Node 20 as /usr/bin/node: the check must stop it with a clear line.
const OLD_NODE = '/usr/bin/node'

t.test('the Node.js check passes on this Node', async (t) => {
  await t.resolves(run(process.execPath, ['src/check-node.cjs']))
})

const version = existsSync(OLD_NODE) ? (await run(OLD_NODE, ['--version'])).stdout.trim() : ''

t.test('an old Node.js is told what to install before anything else runs', {
  skip: !/^v(1\d|2[01])\./.test(version) && `no Node.js older than 22 at ${OLD_NODE}`
}, async (t) => {
  await t.rejects(run(OLD_NODE, ['src/check-node.cjs']), {
    code: 1,
    stderr: new RegExp(`^authgate needs Node.js 22.18 or later \\(24 LTS recommended\\); this is ${version.replaceAll('.', '\\.')}`)
  })
})

t.test('on an old Node.js the README\'s first command, npm install && npm start, ends in that message, not in npm\'s EBADENGINE', {
  skip: (!/^v(1\d|2[01])\./.test(version) || !existsSync('/usr/bin/npm')) && 'no Node.js older than 22 with its npm in /usr/bin'
}, async (t) => {
  const { cp, mkdtemp, mkdir, rm } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const dir = await mkdtemp(join(tmpdir(), 'authgate-old-node-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'src'))
  for (const file of ['package.json', 'package-lock.json', '.npmrc', 'src/check-node.cjs']) if (existsSync(file)) await cp(file, join(dir, file))
  // The machine's own Node.js and npm, as a new user has them; a dry run: what npm decides, nothing downloaded.
  const env = { PATH: '/usr/bin:/bin', HOME: process.env.HOME ?? dir, npm_config_update_notifier: 'false' }
  await t.resolves(run('/usr/bin/npm', ['install', '--dry-run', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'], { cwd: dir, env }), 'npm install goes through, with a warning at most')
  await t.rejects(run('/usr/bin/npm', ['start'], { cwd: dir, env }), { code: 1, stderr: /authgate needs Node\.js 22\.18 or later \(24 LTS recommended\)/ })
})
