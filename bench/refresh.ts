// POST /api/token/refresh alone, on a real server: each autocannon connection refreshes its own
// session's chain (the answer's refresh token is that connection's next request), so every
// request is a rotation, never a retry within the grace or a reuse.
//
//   DB_ENGINE=postgres DATABASE_URL=postgres://postgres@127.0.0.1:5432/test node bench/refresh.ts
//   BENCH_DURATION=10 BENCH_CONNECTIONS=10 SERVER_DIR=/another/checkout node bench/refresh.ts
import autocannon from 'autocannon'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { freePort, startServer } from '../test/server-process.ts'

const duration = Number(process.env.BENCH_DURATION ?? 10)
const connections = Number(process.env.BENCH_CONNECTIONS ?? 10)
const serverDir = process.env.SERVER_DIR ?? join(import.meta.dirname, '..')

const folder = await mkdtemp(join(tmpdir(), 'authgate-bench-'))
// As the service reads them: DATABASE_URL means PostgreSQL unless DB_ENGINE says otherwise.
const engine = process.env.DB_ENGINE ?? (process.env.DATABASE_URL === undefined ? 'pglite' : 'postgres')
const pgDatabase = engine === 'postgres' ? `authgate_bench_${randomBytes(4).toString('hex')}` : undefined
const { DATABASE_URL: _url, DB_ENGINE: _engine, ...inherited } = process.env as Record<string, string>
async function admin (statement: string): Promise<void> {
  const client = new pg.Client({ connectionString: process.env.DATABASE_URL })
  await client.connect()
  await client.query(statement)
  await client.end()
}
const database: Record<string, string> = { DB_ENGINE: engine, DB_NAME: folder }
let server: ReturnType<typeof startServer> | undefined

try {
  if (pgDatabase !== undefined) {
    await admin(`create database ${pgDatabase}`)
    const url = new URL(process.env.DATABASE_URL!)
    url.pathname = `/${pgDatabase}`
    database.DATABASE_URL = url.toString()
  }
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  server = startServer({
    ...inherited,
    NODE_ENV: 'production',
    SECRET_KEY: 'benchmark-secret-key-of-sufficient-length',
    PUBLIC_URL: 'http://localhost',
    ...database,
    HOST: '127.0.0.1',
    PORT: String(port),
    LOG_LEVEL: 'warn',
    BCRYPT_COST: '4',
    RATE_LIMIT_ENABLED: 'false',
    SHUTDOWN_DRAIN_DELAY: '0'
  }, [join(serverDir, 'src/start.js')])
  for (let i = 0; !await fetch(`${base}/health/ready`).then((r) => r.ok, () => false); i++) {
    if (i > 600 || server.child.exitCode !== null) throw new Error(`the server did not start:\n${server.output()}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const post = async (path: string, body: unknown): Promise<Record<string, string>> => {
    const res = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`)
    return await res.json() as Record<string, string>
  }
  const user = { username: `bench${Date.now()}`, email: `bench${Date.now()}@example.com`, password: 'correct horse battery staple' }
  await post('/api/auth/register', user)

  // autocannon builds a connection's next request right after reading its answer, and drops a
  // connection's context between requests: a queue holding exactly one token per connection
  // hands each connection back the token its own answer carried.
  const run = async (seconds: number): Promise<autocannon.Result> => {
    const chains: string[] = []
    for (let i = 0; i < connections; i++) chains.push((await post('/api/token', { username: user.username, password: user.password })).refresh!)
    return await autocannon({
      url: `${base}/api/token/refresh`,
      connections,
      duration: seconds,
      requests: [{
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        setupRequest: (request) => ({ ...request, body: JSON.stringify({ refresh: chains.shift() }) }),
        onResponse: (status, body) => { if (status === 200) chains.push(JSON.parse(body).refresh) }
      }]
    })
  }
  await run(2)
  const result = await run(duration)
  console.log(JSON.stringify({
    server: serverDir,
    engine,
    connections,
    duration,
    'req/s': Math.round(result.requests.average),
    'p50 ms': result.latency.p50,
    'p99 ms': result.latency.p99,
    non2xx: result.non2xx,
    errors: result.errors
  }))
} finally {
  await server?.stop()
  await rm(folder, { recursive: true, force: true })
  if (pgDatabase !== undefined) await admin(`drop database if exists ${pgDatabase} with (force)`)
}
