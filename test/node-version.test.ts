import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { promisify } from 'node:util'
import t from 'tap'

const run = promisify(execFile)
// The machines ship Node 20 as /usr/bin/node: the check must stop it with a clear line.
const OLD_NODE = '/usr/bin/node'

t.test('the Node.js check passes on this Node', async (t) => {
  await t.resolves(run(process.execPath, ['src/check-node.cjs']))
})

const packageJson = JSON.parse(readFileSync('package.json', 'utf8')) as { engines: { node: string } }
/** The floor package.json says, "22.19". */
const FLOOR = /^>=(\d+\.\d+)$/.exec(packageJson.engines.node)?.[1] ?? `not >=MAJOR.MINOR: ${packageJson.engines.node}`
const FLOOR_TEXT = FLOOR.replaceAll('.', '\\.')

// semver, as npm reads engines (a dependency of Fastify's; it ships no types).
interface SemVer { version: string }
const semver = createRequire(import.meta.url)('semver') as {
  Range: new (range: string) => { set: Array<Array<{ value: string }>> }
  minVersion: (range: string) => SemVer | null
  satisfies: (version: string, range: string) => boolean
  compare: (a: string, b: string) => number
}
/** Node 22.18 runs TypeScript without a flag: authgate's own floor, whatever its dependencies ask. */
const OWN_FLOOR = '22.18.0'

t.test('the Node.js floor is the highest that authgate or any installed production dependency asks for', async (t) => {
  const lock = JSON.parse(readFileSync('package-lock.json', 'utf8')) as { packages: Record<string, { dev?: boolean, engines?: { node?: string } }> }
  const asks: Array<{ name: string, range: string, lowest?: string }> = []
  for (const [path, entry] of Object.entries(lock.packages)) {
    const range = entry.engines?.node
    if (path === '' || entry.dev === true || range === undefined) continue
    // The lowest Node.js 22 or later the range allows: each of its alternatives (a || b) in turn.
    const lowest = new semver.Range(range).set
      .map((comparators) => semver.minVersion(`${comparators.map((c) => c.value).join(' ')} >=22.0.0`)?.version)
      .filter((v): v is string => v !== undefined)
      .sort(semver.compare)[0]
    asks.push({ name: path.replace(/^(.*\/)?node_modules\//, ''), range, lowest })
  }
  t.ok(asks.length > 20, `the production dependencies' engines read from package-lock.json (${asks.length})`)
  const highest = asks.reduce((a, b) => semver.compare(b.lowest ?? OWN_FLOOR, a.lowest ?? OWN_FLOOR) > 0 ? b : a)
  const floor = semver.compare(highest.lowest ?? OWN_FLOOR, OWN_FLOOR) > 0 ? highest.lowest : OWN_FLOOR
  t.equal(`${FLOOR}.0`, floor, `package.json's engines.node is the floor: ${highest.name} asks for ${highest.range}`)
  for (const node of [`${FLOOR}.0`, process.versions.node]) {
    t.same(asks.filter((a) => !semver.satisfies(node, a.range)).map((a) => `${a.name} ${a.range}`), [], `every production dependency takes Node.js ${node}`)
  }
  for (const doc of ['README.md', 'docs/development.md']) {
    t.match(readFileSync(doc, 'utf8'), new RegExp(`Node\\.js[^.]*${FLOOR_TEXT}`), `${doc} names ${FLOOR}`)
  }
})

const version = existsSync(OLD_NODE) ? (await run(OLD_NODE, ['--version'])).stdout.trim() : ''

t.test('an old Node.js is told what to install before anything else runs', {
  skip: !/^v(1\d|2[01])\./.test(version) && `no Node.js older than 22 at ${OLD_NODE}`
}, async (t) => {
  await t.rejects(run(OLD_NODE, ['src/check-node.cjs']), {
    code: 1,
    stderr: new RegExp(`^authgate needs Node.js ${FLOOR_TEXT} or later \\(24 LTS recommended\\); this is ${version.replaceAll('.', '\\.')}`)
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
  await t.rejects(run('/usr/bin/npm', ['start'], { cwd: dir, env }), { code: 1, stderr: new RegExp(`authgate needs Node\\.js ${FLOOR_TEXT} or later \\(24 LTS recommended\\)`) })
})
