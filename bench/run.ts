// Throughput of authgate's endpoints, measured with autocannon against the real server.
// Every figure is also given as a ratio to /health/live measured in the same run (the
// floor of Fastify + hooks on this machine), since a shared machine's absolute numbers drift.
//
//   npm run bench                      embedded PGlite, in a temporary folder
//   DB_ENGINE=postgres DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npm run bench
//   BENCH_DURATION=10 BENCH_CONNECTIONS=20 npm run bench
import autocannon, { type Options } from 'autocannon'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { freePort, startServer } from '../test/server-process.ts'

const duration = Number(process.env.BENCH_DURATION ?? 5)
const connections = Number(process.env.BENCH_CONNECTIONS ?? 10)
const bcryptCost = process.env.BCRYPT_COST ?? '12'

// A fresh database: a PGlite folder, or a PostgreSQL database made from DATABASE_URL.
const folder = await mkdtemp(join(tmpdir(), 'authgate-bench-'))
const pgDatabase = process.env.DB_ENGINE === 'postgres' ? `authgate_bench_${randomBytes(4).toString('hex')}` : undefined
async function admin (statement: string): Promise<void> {
  const client = new pg.Client({ connectionString: process.env.DATABASE_URL })
  await client.connect()
  await client.query(statement)
  await client.end()
}
const database: Record<string, string> = { DB_NAME: folder }
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
    ...process.env as Record<string, string>,
    NODE_ENV: 'production',
    SECRET_KEY: 'benchmark-secret-key-of-sufficient-length',
    ...database,
    HOST: '127.0.0.1',
    PORT: String(port),
    // Measures the service, not the writing of a log line per request.
    LOG_LEVEL: 'warn',
    BCRYPT_COST: bcryptCost,
    // One client address sends every request: the limits would answer 429 within a second.
    RATE_LIMIT_ENABLED: 'false',
    SHUTDOWN_DRAIN_DELAY: '0'
  })

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
  const credentials = { identifier: user.username, password: user.password }
  const { access } = await post('/api/auth/login', credentials)
  // Sessions to refresh: each request takes a token from the pool and its answer returns the
  // successor. autocannon prepares a connection's next request before the answer arrives, so
  // the pool holds more sessions than there are connections.
  const refreshPool: string[] = []
  for (let i = 0; i < 4 * connections; i++) refreshPool.push((await post('/api/token', { username: user.username, password: user.password })).refresh!)

  const json = { 'content-type': 'application/json' }
  const scenarios: Array<[string, Partial<Options>]> = [
    ['GET /health/live (baseline)', { url: `${base}/health/live` }],
    ['GET /health/ready (one query)', { url: `${base}/health/ready` }],
    ['GET /.well-known/jwks.json', { url: `${base}/.well-known/jwks.json` }],
    ['GET /api/detail (Bearer)', { url: `${base}/api/detail`, headers: { authorization: `Bearer ${access}` } }],
    ['POST /api/token/verify', { url: `${base}/api/token/verify`, method: 'POST', headers: json, body: JSON.stringify({ token: access }) }],
    ['POST /api/token/refresh (rotation)', {
      url: `${base}/api/token/refresh`,
      requests: [{
        method: 'POST',
        headers: json,
        setupRequest: (request) => ({ ...request, body: JSON.stringify({ refresh: refreshPool.shift() }) }),
        onResponse: (status, body) => { if (status === 200) refreshPool.push(JSON.parse(body).refresh) }
      }]
    }],
    [`POST /api/auth/login (bcrypt cost ${bcryptCost})`, { url: `${base}/api/auth/login`, method: 'POST', headers: json, body: JSON.stringify(credentials) }]
  ]

  // Warm-up, not measured: the JIT and the connection pool settle first.
  for (const [, options] of scenarios.slice(0, -1)) await autocannon({ duration: 1, connections, ...options } as Options)

  const rows: Array<{ scenario: string, 'req/s': number, 'vs baseline': string, 'p50 ms': number, 'p99 ms': number, non2xx: number, errors: number }> = []
  let baseline = 0
  for (const [scenario, options] of scenarios) {
    const result = await autocannon({ duration, connections, ...options } as Options)
    const rps = result.requests.average
    if (baseline === 0) baseline = rps
    rows.push({
      scenario,
      'req/s': Math.round(rps),
      'vs baseline': (rps / baseline).toFixed(3),
      'p50 ms': result.latency.p50,
      'p99 ms': result.latency.p99,
      non2xx: result.non2xx,
      errors: result.errors
    })
  }
  console.log(`\nauthgate on ${process.env.DB_ENGINE ?? 'pglite'}, node ${process.version}, ${connections} connections, ${duration} s each`)
  console.table(rows)
} finally {
  await server?.stop()
  await rm(folder, { recursive: true, force: true })
  if (pgDatabase !== undefined) await admin(`drop database if exists ${pgDatabase} with (force)`)
}
