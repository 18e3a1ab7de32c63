import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { chmod, chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { build, claimsOf, eventually, freshDatabase, login, postJson, serverEnv } from './helper.ts'
import { freePort, startServer } from './server-process.ts'
import { listenForNotifications } from '../src/db/notifications.ts'
import { SessionCache } from '../src/services/sessions/cache.ts'

// authgate behind PgBouncer in transaction mode, the most common PostgreSQL pooler (Debian's
// pgbouncer, installed by .ci/run): it starts, migrates and serves through it, and its replicas
// keep their session caches true only over a direct connection for LISTEN.
const PGBOUNCER = '/usr/sbin/pgbouncer'
const skip = process.env.DB_ENGINE !== 'postgres'
  ? 'PgBouncer pools PostgreSQL: checked in the PostgreSQL run'
  : !existsSync(PGBOUNCER) && `no ${PGBOUNCER} (CI installs Debian's pgbouncer)`

/** PgBouncer in transaction mode on a free port, in front of the PostgreSQL of `databaseUrl`; stopped by its own pid. */
async function startPgBouncer (t: Test, databaseUrl: string): Promise<number> {
  const server = new URL(databaseUrl)
  const dir = await mkdtemp(join(tmpdir(), 'authgate-pgbouncer-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const port = await freePort()
  await writeFile(join(dir, 'userlist.txt'), `"${server.username}" ""\n`)
  await writeFile(join(dir, 'pgbouncer.ini'), [
    '[databases]',
    `* = host=${server.hostname} port=${server.port || 5432}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'auth_type = trust',
    `auth_file = ${join(dir, 'userlist.txt')}`,
    'pool_mode = transaction',
    'max_client_conn = 200',
    'default_pool_size = 20',
    `logfile = ${join(dir, 'pgbouncer.log')}`
  ].join('\n'))
  // PgBouncer will not run as root: as the postgres user then, exec'd in place so that the pid is its own.
  let child: ChildProcess
  if (process.getuid?.() === 0) {
    const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout)
    const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout)
    await chmod(dir, 0o755)
    await chown(dir, uid, gid)
    child = spawn('setpriv', ['--reuid', String(uid), '--regid', String(gid), '--clear-groups', PGBOUNCER, join(dir, 'pgbouncer.ini')], { stdio: 'ignore' })
  } else {
    child = spawn(PGBOUNCER, [join(dir, 'pgbouncer.ini')], { stdio: 'ignore' })
  }
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGTERM')
    await exited
  })
  const listening = async (): Promise<boolean> => {
    const socket = connect(port, '127.0.0.1')
    const up = await once(socket, 'connect').then(() => true, () => false)
    socket.destroy()
    return up
  }
  if (await eventually(async () => child.exitCode !== null || await listening(), { everyMs: 25 }) && child.exitCode === null) return port
  throw new Error(`PgBouncer did not start: ${await readFile(join(dir, 'pgbouncer.log'), 'utf8').catch(() => '')}`)
}

const through = (databaseUrl: string, port: number): string => {
  const url = new URL(databaseUrl)
  url.port = String(port)
  return url.toString()
}

t.test('behind PgBouncer in transaction mode', { skip }, async (t) => {
  const database = await freshDatabase(t)
  const direct = database.DATABASE_URL!
  const pooled = through(direct, await startPgBouncer(t, direct))

  const detailOn = async (app: Awaited<ReturnType<typeof build>>, access: string): Promise<number> =>
    (await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode

  t.test('two replicas through the pooler, LISTEN over DATABASE_LISTEN_URL: a logout on one is refused on the other by its notification', async (t) => {
    const env = { DATABASE_URL: pooled, DATABASE_LISTEN_URL: direct }
    // B's cache on a clock that stands still, its heartbeats good for an hour: no entry ages out
    // and no lapse turns it off, so only a notification can make B refuse what it keeps.
    const cache = new SessionCache({ now: () => 0, heartbeatTimeoutMs: 3_600_000 })
    const a = await build(t, { database: { DB_ENGINE: 'postgres', ...env } })
    const b = await build(t, { database: { DB_ENGINE: 'postgres', ...env }, overrides: { sessionCache: cache } })
    t.ok(await eventually(() => cache.live), 'B\'s listener beats, over its direct connection')
    for (let i = 1; i <= 15; i++) {
      const { access, user } = await login(a)
      t.equal(await detailOn(b, access), 200)
      t.ok(cache.of(claimsOf(access).sid as string, user.id), 'kept in B\'s cache')
      t.equal((await postJson(a, '/api/auth/logout', {}, { authorization: `Bearer ${access}` })).statusCode, 204)
      if (!t.ok(await eventually(async () => await detailOn(b, access) === 401), `logout ${i} on A: refused on B`)) break
    }
  })

  t.test('without DATABASE_LISTEN_URL the pooled listener is found out: no cache, every logout refused at once, and a warning says why', async (t) => {
    const logLines: string[] = []
    const cache = new SessionCache()
    const a = await build(t, { database: { DB_ENGINE: 'postgres', DATABASE_URL: pooled } })
    const b = await build(t, { database: { DB_ENGINE: 'postgres', DATABASE_URL: pooled }, logLines, overrides: { sessionCache: cache } })
    const firstAfterLogout: number[] = []
    for (let i = 0; i < 15; i++) {
      const { access } = await login(a)
      for (let j = 0; j < 2; j++) t.equal(await detailOn(b, access), 200)
      t.equal((await postJson(a, '/api/auth/logout', {}, { authorization: `Bearer ${access}` })).statusCode, 204)
      firstAfterLogout.push(await detailOn(b, access))
    }
    t.same(firstAfterLogout, Array(15).fill(401), 'refused on B at the first request after each logout')
    t.equal(cache.live, false, 'B\'s cache was never used')
    t.equal(cache.size, 0, 'and kept nothing')
    const warnings = (): string[] => logLines.map((line) => JSON.parse(line)).filter((line) => line.level === 40).map((line) => line.msg as string)
    t.ok(await eventually(() => warnings().some((msg) => /DATABASE_LISTEN_URL/.test(msg))), `warned: ${warnings().join(' | ')}`)
  })

  t.test('a pooled listener is found out by its handshake, before any heartbeat could land on its server connection', async (t) => {
    /** A listener on `listenUrl`, with what it warned of and how many heartbeats it heard. */
    const listenOn = (listenUrl: string, beatIntervalMs: number) => {
      const heard = { warnings: [] as string[], beats: 0, listening: 0 }
      const listener = listenForNotifications({
        listenUrl,
        beatUrl: direct,
        channels: { authgate_test: () => {} },
        onListening: () => { heard.listening++ },
        onBeat: () => { heard.beats++ },
        onLost: () => {},
        warn: (message) => heard.warnings.push(message),
        beatIntervalMs,
        silenceWarningMs: 3_600_000
      })
      t.teardown(() => listener.close())
      return heard
    }
    // Heartbeats an hour apart: none is sent before the warning, so the handshake gave it away.
    const pooledListener = listenOn(pooled, 3_600_000)
    t.ok(await eventually(() => pooledListener.warnings.length > 0), 'warned')
    t.match(pooledListener.warnings, [/transaction pooler.*DATABASE_LISTEN_URL/])
    t.equal(pooledListener.listening, 0, 'a pooled listener never says it listens')
    const directListener = listenOn(direct, 250)
    t.ok(await eventually(() => directListener.beats >= 2), 'a direct listener hears its heartbeats')
    t.same(directListener.warnings, [], 'a direct connection is not taken for a pooler')
    t.equal(directListener.listening, 1, 'it said once that it listens')
  })

  t.test('a session read through the pooler sees its own sign-in and refresh', async (t) => {
    const app = await build(t, { database: { DB_ENGINE: 'postgres', DATABASE_URL: pooled, DATABASE_LISTEN_URL: direct } })
    const { refresh, access } = await login(app)
    const next = await postJson(app, '/api/token/refresh', { refresh })
    t.equal(next.statusCode, 200)
    t.equal(claimsOf(next.json().access).sid, claimsOf(access).sid)
    t.equal((await postJson(app, '/api/token/refresh', { refresh })).statusCode, 200, 'a replay within the grace gets the same pair')
  })

  t.test('a connection the pooler refuses stops the start at once, saying why', async (t) => {
    // PgBouncer refuses startup parameters it does not track: what authgate itself sent before.
    const refused = new URL(pooled)
    refused.searchParams.set('options', '-c statement_timeout=1000')
    // An hour to retry: had it retried, it would still be trying when the wait below gives up.
    const server = startServer(serverEnv({ DATABASE_URL: refused.toString() }, { DB_START_TIMEOUT: '1h' }))
    t.teardown(() => { server.child.kill('SIGKILL') })
    t.ok(await eventually(() => server.child.exitCode !== null, { everyMs: 50 }), 'exits, not retried for DB_START_TIMEOUT')
    t.equal(server.child.exitCode, 1)
    t.notMatch(server.output(), /trying again/, 'not one retry')
    t.match(server.output(), /authgate: could not start: the database refused the connection: unsupported startup parameter: options\n/)
  })
})
