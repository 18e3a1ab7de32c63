import { chmod, mkdir, mkdtemp, readdir, rm, stat, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { becomesReady, freshDatabase, serverEnv } from './helper.ts'
import { startServer } from './server-process.ts'

// src/start.js keeps Node's compile cache in the temporary directory, in a folder only its
// user can write: whoever can write the cache chooses the code that runs.
const uid = process.getuid?.()

async function serve (t: Test, tmp: string): Promise<void> {
  const { NODE_COMPILE_CACHE: _, ...env } = serverEnv(await freshDatabase(t), { TMPDIR: tmp })
  const server = startServer(env)
  t.teardown(() => { server.child.kill('SIGKILL') })
  t.ok(await becomesReady(await server.listening), 'the server starts')
  t.equal(await server.stop(), 0)
}

async function temporary (t: Test): Promise<string> {
  const tmp = await mkdtemp(join(tmpdir(), 'authgate-cache-test-'))
  t.teardown(() => rm(tmp, { recursive: true, force: true }))
  return tmp
}

t.test('the compiled code is kept for the next start, in a folder only this user can write', { skip: uid === undefined && 'no user ids here' }, async (t) => {
  const tmp = await temporary(t)
  await serve(t, tmp)
  const folder = join(tmp, `authgate-compile-cache-${uid}`)
  const { mode, uid: owner } = await stat(folder)
  t.equal(mode & 0o777, 0o700, 'the owner\'s alone')
  t.equal(owner, uid)
  t.ok((await readdir(folder, { recursive: true })).length > 100, 'the modules\' code is in it once the server is ready')
})

t.test('a cache folder that others can write, or a link, is not used', { skip: uid === undefined && 'no user ids here' }, async (t) => {
  const open = await temporary(t)
  const shared = join(open, `authgate-compile-cache-${uid}`)
  await mkdir(shared)
  await chmod(shared, 0o777)
  await serve(t, open)
  t.same(await readdir(shared), [], 'a folder anyone can write stays empty')

  const linked = await temporary(t)
  const elsewhere = join(linked, 'elsewhere')
  await mkdir(elsewhere, { mode: 0o700 })
  await symlink(elsewhere, join(linked, `authgate-compile-cache-${uid}`))
  await serve(t, linked)
  t.same(await readdir(elsewhere), [], 'a link is not followed')
})
