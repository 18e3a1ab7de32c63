import { once } from 'node:events'
import { mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { runCli } from '../src/cli.ts'
import { FolderLockedError, lockFolder } from '../src/lib/folder-lock.ts'
import { becomesReady, build, freshDatabase, login, postJson, SECRET_KEY, serverEnv, uniqueUser } from './helper.ts'
import { startServer } from './server-process.ts'

const skip = process.env.DB_ENGINE === 'postgres' && 'the data folder is PGlite\'s'

/** Every file and folder under `root`, with its permission bits. */
async function modes (root: string): Promise<Array<{ path: string, mode: number, dir: boolean }>> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true })
  return await Promise.all(entries.map(async (entry) => {
    const path = join(entry.parentPath, entry.name)
    return { path, mode: (await stat(path)).mode & 0o777, dir: entry.isDirectory() }
  }))
}

t.test('the embedded database lives in a folder of the owner\'s alone, made where DB_NAME says, its files the owner\'s too', { skip }, async (t) => {
  const parent = await mkdtemp(join(tmpdir(), 'authgate-data-'))
  t.teardown(() => rm(parent, { recursive: true, force: true }))
  // A folder that does not exist yet (PGlite's own initdb runs in it), with SECRET_KEY set (so no secret file makes it first).
  const folder = join(parent, 'not', 'there', 'yet')
  const app = await build(t, { database: { DB_ENGINE: 'pglite', DB_NAME: folder } })
  await login(app)
  t.equal((await stat(folder)).mode & 0o777, 0o700, 'others can neither read nor write anything in it')
  t.ok((await readdir(join(folder, 'pglite'))).length > 0, 'PGlite wrote its files inside')
  t.same(await readdir(folder).then((names) => names.sort()), ['.gitignore', 'authgate.lock', 'pglite'])
  // Files made as the database grows: a table and its rows, after the start.
  await app.db.schema.createTable('grown').addColumn('x', 'text').execute()
  await app.db.insertInto('grown' as never).values({ x: 'y'.repeat(100_000) } as never).execute()
  const wrong = (await modes(join(folder, 'pglite'))).filter(({ mode, dir }) => mode !== (dir ? 0o700 : 0o600))
  t.same(wrong, [], 'files 0600, folders 0700, as PostgreSQL makes its own')
})

t.test('one process per data folder', { skip }, async (t) => {
  const folder = await mkdtemp(join(tmpdir(), 'authgate-lock-'))
  t.teardown(() => rm(folder, { recursive: true, force: true }))
  const env = serverEnv({ DB_ENGINE: 'pglite', DB_NAME: folder })
  const first = startServer(env)
  t.teardown(() => { first.child.kill('SIGKILL') })
  const url = await first.listening
  const user = uniqueUser()
  t.equal((await fetch(`${url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(user) })).status, 201)

  t.test('a second npm start on it refuses, naming the process that holds it', async (t) => {
    const second = startServer(env)
    t.teardown(() => { second.child.kill('SIGKILL') })
    t.equal((await once(second.child, 'exit'))[0], 1)
    t.match(second.output(), new RegExp(`^authgate: could not start: the data folder ${folder} is in use by process ${first.child.pid} \\(start\\.js, since [0-9T:.-]+Z\\): stop it first, or give this one another DB_NAME\\n$`))
    t.ok(await becomesReady(url), 'the first serves on')
  })

  t.test('a CLI command beside it is handed to it (test/command-socket.test.ts): the change is its own at once', async (t) => {
    const rotate = await runCli(['keys:rotate'], { DB_ENGINE: 'pglite', DB_NAME: folder, SECRET_KEY })
    const kid = /^signing with ([0-9a-f-]{36}) \(ES256\);/.exec(rotate.stdout)?.[1]
    t.ok(kid, rotate.stderr)
    const { keys } = await (await fetch(`${url}/.well-known/jwks.json`)).json() as { keys: Array<{ kid: string }> }
    t.ok(keys.some((key) => key.kid === kid))
  })

  t.test('once it stops, the next start takes the folder and finds what the first wrote', async (t) => {
    t.equal(await first.stop(), 0)
    const next = startServer(env)
    t.teardown(() => { next.child.kill('SIGKILL') })
    const again = await next.listening
    t.equal((await fetch(`${again}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ identifier: user.username, password: user.password }) })).status, 200)
    t.equal(await next.stop(), 0)
  })
})

t.test('a lock its holder left behind is taken over; a live one is not', { skip }, async (t) => {
  const folder = await mkdtemp(join(tmpdir(), 'authgate-stale-'))
  t.teardown(() => rm(folder, { recursive: true, force: true }))
  const file = join(folder, 'authgate.lock')
  const namespace = (await import('node:fs')).readlinkSync('/proc/self/ns/pid')
  const holder = (over: Record<string, unknown>): string => JSON.stringify({ pid: 2 ** 22 + 1, started: '1', host: hostname(), pidNamespace: namespace, command: 'server.ts', since: '2026-01-01T00:00:00.000Z', ...over })

  // A process of this host that is gone (a kill -9, a crash): taken over at once.
  await writeFile(file, holder({}))
  const taken = await lockFolder(folder)
  t.match(JSON.parse(await readFile(file, 'utf8')), { pid: process.pid })
  await taken.release()
  await t.rejects(stat(file), { code: 'ENOENT' }, 'released: the file goes')

  // A pid that lives, but another process than the one that locked (its start differs): taken over.
  await writeFile(file, holder({ pid: process.ppid, started: '1' }))
  await (await lockFolder(folder)).release()

  // A process in another container on a shared volume: alive while it touches the file.
  await writeFile(file, holder({ host: 'another-container', pidNamespace: 'pid:[1]' }))
  await t.rejects(lockFolder(folder), FolderLockedError)
  await t.rejects(lockFolder(folder), { message: new RegExp(`^the data folder ${folder} is in use by process \\d+ on another-container `) })
  const old = new Date(Date.now() - 60_000)
  await utimes(file, old, old)
  await (await lockFolder(folder)).release()

  // This process holds it: a second database of its own is refused too.
  const held = await lockFolder(folder)
  await t.rejects(lockFolder(folder), { message: new RegExp(`in use by process ${process.pid} `) })
  await held.release()
})

// A copy of the migrated template, not a new folder: an initdb of PGlite beside other test files'
// once aborted this process (SIGABRT, in CI; electric-sql/pglite#1053 reports concurrent PGlite
// starts crashing Node's WebAssembly runtime), and this test is about the lock, not initdb.
t.test('two apps of one process on one folder: the second refuses at its first query', { skip }, async (t) => {
  const database = await freshDatabase(t)
  const app = await build(t, { database })
  await t.rejects(build(t, { database }), { name: 'FolderLockedError' })
  t.equal((await postJson(app, '/api/auth/register', uniqueUser())).statusCode, 201, 'the first serves on')
})
