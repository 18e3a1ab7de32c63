import { once } from 'node:events'
import { readdir, readFile } from 'node:fs/promises'
import t from 'tap'
import { becomesReady, freshDatabase, SECRET_KEY, serverEnv, uniqueUser } from './helper.ts'
import { startServer } from './server-process.ts'
import { proxyDatabase } from './tcp-proxy.ts'

t.test('npm start serves on HOST:PORT and shuts down gracefully on SIGTERM', async (t) => {
  const server = startServer(serverEnv(await freshDatabase(t)))
  t.teardown(() => { server.child.kill('SIGKILL') })
  const url = await server.listening
  t.ok(await becomesReady(url), 'ready')
  if (process.platform === 'linux') {
    // libuv's workers (bcrypt) yield to the main thread (the requests): nice 10, the main thread 0.
    const threads = await Promise.all((await readdir(`/proc/${server.child.pid}/task`)).map(async (tid) => {
      const stat = await readFile(`/proc/${server.child.pid}/task/${tid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      return { name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), nice: Number(fields[16]) }
    }))
    const workers = threads.filter((thread) => thread.name === 'libuv-worker')
    t.ok(workers.length >= 4 && workers.every((w) => w.nice === 10), `libuv workers at nice 10: ${JSON.stringify(workers)}`)
    t.equal(threads.find((thread) => thread.name !== 'libuv-worker')?.nice, 0, 'the main thread at 0')
  }
  const logs = server.output().split('\n').filter(Boolean).map((line) => JSON.parse(line))
  t.ok(logs.every((l) => typeof l.level === 'number'), 'structured JSON logs')
  t.equal(await server.stop(), 0)
  t.match(server.output(), /"signal":"SIGTERM"/)
})

t.test('a bad variable stops the start, naming it', async (t) => {
  const server = startServer({ ...process.env, SECRET_KEY, PORT: 'eighty' })
  const [code] = await once(server.child, 'exit')
  t.equal(code, 1)
  t.equal(server.output(), 'authgate: invalid configuration: PORT must be a whole number, not "eighty"\n')
})

t.test('a start that fails later says why in one line', async (t) => {
  const { SECRET_KEY: _, DATABASE_URL: _url, DB_ENGINE: _engine, ...env } = process.env as Record<string, string>
  const noSecret = startServer({ ...env, NODE_ENV: 'production', PUBLIC_URL: 'https://auth.example.com', DB_NAME: 'memory://' })
  t.equal((await once(noSecret.child, 'exit'))[0], 1)
  t.match(noSecret.output(), /^authgate: invalid configuration: SECRET_KEY is required when NODE_ENV=production: make one with `openssl rand -base64 48`[^\n]*\n$/, 'one line, with how to make one')

  // Port 1 on the loopback: nothing listens there. 5 s: room for three attempts (0.75 s of waits)
  // however slowly a loaded machine makes each one.
  const noDatabase = startServer({
    ...env, SECRET_KEY, LOG_LEVEL: 'info', DB_ENGINE: 'postgres', DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none', DB_START_TIMEOUT: '5s'
  })
  let stderr = ''
  noDatabase.child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk })
  t.equal((await once(noDatabase.child, 'exit'))[0], 1)
  // Said only once the deadline has passed (plugins/db.ts): it tried for all of DB_START_TIMEOUT.
  t.equal(stderr, 'authgate: could not start: the database did not answer within 5s (DB_START_TIMEOUT): connect ECONNREFUSED 127.0.0.1:1\n', 'one line, the cause once')
  const retries = noDatabase.output().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line))
    .filter((line) => line.msg === 'the database does not answer yet; trying again')
  t.ok(retries.length >= 3, `a warning per attempt (${retries.length})`)
  t.ok(retries.every((line) => line.level === 40), 'at warn')
  t.same(retries.slice(0, 3).map((line) => line.retryInMs), [250, 500, 1000], 'waits that double')
  // No wait is longer than the backoff's (the last one is cut to what is left of the deadline).
  t.ok(retries.every((line, i) => line.retryInMs <= Math.min(250 * 2 ** i, 5000)), 'waits no longer than the backoff\'s')
})

t.test('a start while the database does not answer yet waits for it, then serves', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'PGlite runs in the process: it is always there'
}, async (t) => {
  const database = await freshDatabase(t)
  const { proxy, url: through } = await proxyDatabase(t, database.DATABASE_URL!)
  await proxy.close()
  const server = startServer({
    // An hour: the server waits however slowly a loaded machine lets the test reopen the database.
    ...process.env, ...database, DATABASE_URL: through, SECRET_KEY, HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'info', DB_START_TIMEOUT: '1h'
  })
  t.teardown(() => { server.child.kill('SIGKILL') })
  // Until the server has tried at least twice (its start takes a while on a busy machine).
  while ((server.output().match(/the database does not answer yet; trying again/g) ?? []).length < 2) {
    t.equal(server.child.exitCode, null, 'still trying')
    if (server.child.exitCode !== null) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  await proxy.reopen()
  const url = await server.listening
  t.ok(await becomesReady(url), 'ready')
  const user = uniqueUser()
  const registered = await fetch(`${url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(user) })
  t.equal(registered.status, 201, 'serves')
  t.equal(await server.stop(), 0)
})

t.test('a connection the database refuses is not tried again, and is not called a failed migration', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'the retry is for PostgreSQL'
}, async (t) => {
  const database = await freshDatabase(t)
  const missing = new URL(database.DATABASE_URL!)
  missing.pathname = `${missing.pathname}_missing`
  const nobody = new URL(database.DATABASE_URL!)
  nobody.username = 'authgate_no_such_role'
  for (const [url, reason] of [
    [missing, /database "authgate_test_\w+_missing" does not exist/],
    [nobody, /role "authgate_no_such_role" does not exist/]
  ] as const) {
    // An hour to retry in: had it retried, the test would hang instead of ending.
    const server = startServer(serverEnv({ DATABASE_URL: url.toString() }, { DB_START_TIMEOUT: '1h' }))
    t.equal((await once(server.child, 'exit'))[0], 1)
    t.match(server.output(), new RegExp(`authgate: could not start: the database refused the connection: ${reason.source}\\n$`))
    t.notMatch(server.output(), /trying again|migration/, 'not tried again: a database that answers "no" is not down')
  }
})

t.test('a migration that fails is not tried again', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'the retry is for PostgreSQL'
}, async (t) => {
  const database = await freshDatabase(t)
  const pg = (await import('pg')).default
  const admin = new pg.Client({ connectionString: database.DATABASE_URL })
  await admin.connect()
  // A table in the way of the first migration's.
  await admin.query('create table users (id int)')
  await admin.end()
  const server = startServer(serverEnv(database, { DB_START_TIMEOUT: '1h' }))
  t.equal((await once(server.child, 'exit'))[0], 1)
  t.match(server.output(), /authgate: could not start: database migration failed: 0001-initial: relation "users" already exists\n$/)
  t.notMatch(server.output(), /trying again/, 'not tried again')
})
