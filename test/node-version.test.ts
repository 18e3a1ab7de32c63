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
