import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { chmod, chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { build, claimsOf, freshDatabase, login, postJson, serverEnv } from './helper.ts'
import { freePort, startServer } from './server-process.ts'
import { listenForNotifications } from '../src/db/notifications.ts'

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
  for (let i = 0; ; i++) {
    const socket = connect(port, '127.0.0.1')
    const up = await once(socket, 'connect').then(() => true, () => false)
    socket.destroy()
    if (up) return port
    if (i > 200 || child.exitCode !== null) throw new Error(`PgBouncer did not start: ${await readFile(join(dir, 'pgbouncer.log'), 'utf8').catch(() => '')}`)
    await sleep(25)
  }
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

  /** Milliseconds until `app` refuses `access` at /api/detail, polling every 5 ms; Infinity past `limitMs`. */
  async function refusedWithin (app: Awaited<ReturnType<typeof build>>, access: string, limitMs: number): Promise<number> {
    const started = performance.now()
    while ((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode === 200) {
      if (performance.now() - started > limitMs) return Infinity
      await sleep(5)
    }
    return performance.now() - started
  }

  /** Fifteen times: sign in on A, read the session on B twice (cached), sign out on A; how long B still took the token. */
  async function logoutsSeenOnB (a: Awaited<ReturnType<typeof build>>, b: typeof a): Promise<number[]> {
    const delays: number[] = []
    for (let i = 0; i < 15; i++) {
      const { access } = await login(a)
      for (let j = 0; j < 2; j++) t.equal((await b.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode, 200)
      t.equal((await postJson(a, '/api/auth/logout', {}, { authorization: `Bearer ${access}` })).statusCode, 204)
      delays.push(await refusedWithin(b, access, 3000))
    }
    return delays
  }

  t.test('two replicas through the pooler, LISTEN over DATABASE_LISTEN_URL: a logout on one is refused on the other within a second', async (t) => {
    const env = { DATABASE_URL: pooled, DATABASE_LISTEN_URL: direct }
    const a = await build(t, { database: { DB_ENGINE: 'postgres', ...env } })
    const b = await build(t, { database: { DB_ENGINE: 'postgres', ...env } })
    // Both listeners' first heartbeat.
    await sleep(600)
    const delays = await logoutsSeenOnB(a, b)
    t.ok(delays.every((ms) => ms <= 1000), `refused on B after ${delays.map((ms) => Math.round(ms)).join(', ')} ms`)
  })

  t.test('without DATABASE_LISTEN_URL the pooled listener is found out: no cache, every logout refused at once, and a warning says why', async (t) => {
    const logLines: string[] = []
    const a = await build(t, { database: { DB_ENGINE: 'postgres', DATABASE_URL: pooled } })
    const b = await build(t, { database: { DB_ENGINE: 'postgres', DATABASE_URL: pooled }, logLines })
    await sleep(600)
    const delays = await logoutsSeenOnB(a, b)
    t.ok(delays.every((ms) => ms < 100), `refused on B at the first request after the logout (${delays.map((ms) => Math.round(ms)).join(', ')} ms)`)
    const warnings = logLines.map((line) => JSON.parse(line)).filter((line) => line.level === 40).map((line) => line.msg as string)
    t.ok(warnings.some((msg) => /DATABASE_LISTEN_URL/.test(msg)), `warned: ${warnings.join(' | ')}`)
  })

  t.test('a pooled listener is found out by its handshake, before any heartbeat could land on its server connection', async (t) => {
    /** The warnings of a listener on `listenUrl` in its first second, heartbeats a minute apart. */
    const warningsOf = async (listenUrl: string): Promise<string[]> => {
      const warnings: string[] = []
      const listener = listenForNotifications({
        listenUrl,
        beatUrl: direct,
        channels: { authgate_test: () => {} },
        onBeat: () => {},
        onLost: () => {},
        warn: (message) => warnings.push(message),
        beatIntervalMs: 60_000,
        silenceWarningMs: 60_000
      })
      await sleep(1000)
      await listener.close()
      return warnings
    }
    t.match(await warningsOf(pooled), [/transaction pooler.*DATABASE_LISTEN_URL/])
    t.same(await warningsOf(direct), [], 'a direct connection is not taken for a pooler')
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
    const server = startServer(serverEnv({ DATABASE_URL: refused.toString() }, { DB_START_TIMEOUT: '30s' }))
    t.teardown(() => { server.child.kill('SIGKILL') })
    const started = performance.now()
    const [code] = await once(server.child, 'exit')
    t.equal(code, 1)
    t.ok(performance.now() - started < 10_000, 'not retried for DB_START_TIMEOUT')
    t.match(server.output(), /authgate: could not start: the database refused the connection: unsupported startup parameter: options\n/)
  })
})
