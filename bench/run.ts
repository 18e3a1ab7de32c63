// authgate's benchmark (issue 10): a real server in production mode driven by autocannon over
// loopback, in interleaved rounds whose medians are the figures, each set against a bare
// Fastify route answering the same body (the floor) measured in the same run. Prints one table
// and writes BENCHMARKS.md.
//
//   npm run bench            PostgreSQL when DATABASE_URL is set (its own database, dropped
//                            at the end), else embedded PGlite in a temporary folder
//   DB_ENGINE=postgres DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npm run bench
//   BENCH_ROUNDS=5 BENCH_DURATION=3 BENCH_CONNECTIONS=32 npm run bench
//   BENCH_SEED=1 npm run bench
//                            also the Django seed's refresh (issue 31's baseline) when
//                            ../shared/seed-django/ is beside the repository: started with its own
//                            setup.sh (SKIP_APT=1: its Debian packages must be installed) and
//                            start.sh on a free port of 127.0.0.1, stopped with its stop.sh
//
// On PostgreSQL, each round also runs pgbench (/usr/lib/postgresql/*/bin/pgbench, when there is
// one) on the bench's database: a durable one-row update, the yardstick of a refresh.
import type { Client } from 'autocannon'
import bcrypt from 'bcrypt'
import { decodeJwt } from 'jose'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import type { Test } from 'tap'
import { runCli } from '../src/cli.ts'
import { startOidcProvider, type StartedProvider } from '../test/oidc-provider.ts'
import { assert, register as makePasskey, type SoftCredential } from '../test/soft-authenticator.ts'
import { freePort, startServer, type ServerProcess } from '../test/server-process.ts'
import { startWorkloadIssuer, type WorkloadIssuer } from '../test/workload-issuer.ts'
import { assertionCostUs, assertionMaker } from './assertion.ts'
import { load, loadClosing, median, type Run } from './load.ts'
import { findPgbench, pgbenchArgs, pgbenchRun, preparePgbench } from './pgbench.ts'
import { seedAbsence, startSeed, type Seed } from './seed.ts'
import { command, machine, ratio, rssMB, writeBenchmarks, yesNo, type Figure, type ScenarioRow } from './report.ts'

const setting = (name: string, fallback: number, minimum: number): number => {
  const value = Number(process.env[name] ?? fallback)
  if (!Number.isFinite(value) || value < minimum) throw new Error(`${name} must be a number >= ${minimum}`)
  return value
}
const rounds = setting('BENCH_ROUNDS', 5, 1)
const duration = setting('BENCH_DURATION', 3, 2)
const connections = setting('BENCH_CONNECTIONS', 32, 1)
// A login waits in the bcrypt queue (libuv's 4 threads on the machine's cores): a few
// connections keep it full; more only lengthen the wait toward the 8 s handler deadline.
const loginConnections = setting('BENCH_LOGIN_CONNECTIONS', 8, 1)
// bcrypt answers a few per second, the first only after the queue filled: login, register,
// the flood and its reference run longer, to count enough of them.
const loginDuration = setting('BENCH_LOGIN_DURATION', 2 * duration, 2)
const floodConnections = setting('BENCH_FLOOD_CONNECTIONS', 8, 1)
const starts = setting('BENCH_STARTS', 5, 0)
const bcryptCost = setting('BCRYPT_COST', 12, 4)
const engine = process.env.DB_ENGINE ?? (process.env.DATABASE_URL === undefined ? 'pglite' : 'postgres')
if (engine === 'postgres' && process.env.DATABASE_URL === undefined) throw new Error('DB_ENGINE=postgres needs DATABASE_URL')
const cores = machine().cores
const seedWanted = process.env.BENCH_SEED === '1'
const seedFolder = fileURLToPath(new URL('../../shared/seed-django/', import.meta.url))

const began = performance.now()
const serverPath = fileURLToPath(new URL('../src/start.js', import.meta.url))
// The service as `npm start` runs it: the Node.js flags of package.json's start script.
const { scripts } = JSON.parse(readFileSync(fileURLToPath(new URL('../package.json', import.meta.url)), 'utf8')) as { scripts: { start: string } }
const serverArgs = [...scripts.start.split(' ').filter((word) => word.startsWith('--')), serverPath]
const floorPath = fileURLToPath(new URL('./floor.ts', import.meta.url))
const benchmarksPath = fileURLToPath(new URL('../BENCHMARKS.md', import.meta.url))
const progress = (message: string): void => { process.stderr.write(`bench: ${message}\n`) }

// A fresh database: a PGlite folder, or a PostgreSQL database made from DATABASE_URL.
const folder = await mkdtemp(join(tmpdir(), 'authgate-bench-'))
const pgDatabase = engine === 'postgres' ? `authgate_bench_${randomBytes(4).toString('hex')}` : undefined
async function admin (statement: string): Promise<void> {
  const client = new pg.Client({ connectionString: process.env.DATABASE_URL })
  await client.connect()
  try {
    await client.query(statement)
  } finally {
    await client.end()
  }
}

const { DATABASE_URL: _url, DB_ENGINE: _engine, ...inherited } = process.env as Record<string, string>
const serverEnv: Record<string, string> = {
  ...inherited,
  NODE_ENV: 'production',
  SECRET_KEY: 'benchmark-secret-key-of-sufficient-length',
  PUBLIC_URL: 'http://localhost',
  DB_ENGINE: engine,
  DB_NAME: folder,
  HOST: '127.0.0.1',
  // Measures the service, not the writing of a log line per request.
  LOG_LEVEL: 'warn',
  BCRYPT_COST: String(bcryptCost),
  // One client address sends every request: the limits would answer 429 within a second.
  RATE_LIMIT_ENABLED: 'false',
  SHUTDOWN_DRAIN_DELAY: '0'
}

/** Polls /health/ready every 15 ms until it answers 200; the milliseconds from `since`. */
async function ready (server: ServerProcess, base: string, since: number, limitMs: number): Promise<number> {
  for (;;) {
    const ok = await fetch(`${base}/health/ready`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false)
    if (ok) return performance.now() - since
    if (server.child.exitCode !== null || server.child.signalCode !== null) throw new Error(`the server exited:\n${server.output()}`)
    if (performance.now() - since > limitMs) throw new Error(`the server was not ready within ${limitMs} ms:\n${server.output()}`)
    await sleep(15)
  }
}

/** The floor in its own process; resolves to its URL. */
async function startFloor (body: unknown): Promise<{ url: string, stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [floorPath], {
    env: { ...inherited, NODE_ENV: 'production', FLOOR_BODY: JSON.stringify(body) },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const lines = createInterface({ input: child.stdout })
  const exited = once(child, 'exit').then(([code]) => { throw new Error(`the floor exited (${code})`) })
  const port = await Promise.race([exited, (async () => {
    for await (const line of lines) {
      const match = /^listening (\d+)$/.exec(line)
      if (match !== null) return match[1]
    }
    throw new Error('the floor closed its output')
  })()])
  exited.catch(() => {})
  return {
    url: `http://127.0.0.1:${port}`,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const gone = once(child, 'exit')
      child.kill('SIGTERM')
      await gone
    }
  }
}

/** Five bcrypt.compare at the run's cost in this process, one at a time, in ms. */
async function bcryptCompareTimes (): Promise<number[]> {
  const hash = await bcrypt.hash('correct horse battery staple', bcryptCost)
  const times: number[] = []
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now()
    await bcrypt.compare('correct horse battery staple', hash)
    times.push(performance.now() - t0)
  }
  return times
}

/**
 * The upstream identity provider of the id-token scenario: panva's oidc-provider on 127.0.0.1, as
 * the tests start it (test/oidc-provider.ts), with an account per connection. Its closers (and
 * the workload issuer's) run where a test's teardown would.
 */
const providerClosers: Array<() => unknown> = []
const teardownOnly = { teardown: (close: () => unknown) => { providerClosers.push(close) } } as unknown as Test
async function startProvider (accounts: number, tag: string): Promise<StartedProvider> {
  return await startOidcProvider(teardownOnly, {
    // authgate's own client; the ID tokens are the native app's (EXTRA_AUDIENCES), as a phone's SDK gets them.
    clients: [{ client_id: 'authgate-bench', client_secret: 'authgate-bench-secret-0123456789', redirect_uris: ['http://localhost/api/auth/oidc/corp/callback'] }],
    accounts: Object.fromEntries(Array.from({ length: accounts }, (_, i) => [`bench-${i}`, {
      email: `idp_${tag}_${i}@example.com`, email_verified: true, preferred_username: `idp_${tag}_${i}`
    }]))
  })
}
const NATIVE_CLIENT = 'bench-native-app'

/** The page a passkey is used on (WEBAUTHN_ORIGINS): the test's software authenticator signs for it. */
const PASSKEY_PAGE = { origin: 'http://localhost:5173', rpId: 'localhost' }

/** The Kubernetes service account of the JWT bearer scenario's tokens (the issuer's default). */
const WORKLOAD_SUBJECT = 'system:serviceaccount:shop:orders-worker'
/** An assertion's lifetime: Kubernetes' default for a projected token, and the longest authgate takes. */
const ASSERTION_LIFETIME_S = 3600

type Key = 'floor' | 'detail' | 'check' | 'verify' | 'refresh' | 'pgbench' | 'seedRefresh' | 'oauthToken' | 'exchange' | 'introspect' | 'jwtBearer' | 'idToken' | 'passkey' | 'login' | 'register' | 'detailAlone' | 'detailFlood' | 'loginFlood'
const runs: Record<Key, Run[]> = {
  floor: [], detail: [], check: [], verify: [], refresh: [], pgbench: [], seedRefresh: [], oauthToken: [], exchange: [], introspect: [], jwtBearer: [], idToken: [], passkey: [], login: [], register: [], detailAlone: [], detailFlood: [], loginFlood: []
}
const json = { 'content-type': 'application/json' }
const refreshTrouble = { resent: 0, failed: 0 }
// Introspection answers 200 to anything; only {"active":true,…} is the path measured.
const introspectTrouble = { inactive: 0 }
// JWT bearer grants answered 200, each of which must have spent one jti (one row).
let workloadGrants = 0
let server: ServerProcess | undefined
let seed: Seed | undefined
let serviceClient = { client_id: '', client_secret: '' }
let exchangeClient = { client_id: '', client_secret: '' }
let introspectClient = { client_id: '', client_secret: '' }
let workloadClient = { client_id: '' }
// A command of `npm run clients` or `migrate` on the bench's database: its output.
async function cli (args: string[]): Promise<string> {
  const result = await runCli(args, serverEnv)
  if (result.code !== 0) throw new Error(`${args.join(' ')}: ${result.stderr}`)
  return result.stdout
}
let floor: Awaited<ReturnType<typeof startFloor>> | undefined
let exitCode = 0

try {
  if (pgDatabase !== undefined) {
    await admin(`create database ${pgDatabase}`)
    const url = new URL(process.env.DATABASE_URL!)
    url.pathname = `/${pgDatabase}`
    serverEnv.DATABASE_URL = url.toString()
  }
  // The provider first: its issuer is in the server's configuration.
  const providerTag = randomBytes(3).toString('hex')
  const provider = await startProvider(connections, providerTag)
  Object.assign(serverEnv, {
    OIDC_PROVIDERS: 'corp',
    OIDC_CORP_ISSUER: provider.issuer,
    OIDC_CORP_CLIENT_ID: 'authgate-bench',
    OIDC_CORP_CLIENT_SECRET: 'authgate-bench-secret-0123456789',
    OIDC_CORP_EXTRA_AUDIENCES: NATIVE_CLIENT,
    OIDC_CORP_TRUST_EMAIL: 'true',
    WEBAUTHN_RP_ID: PASSKEY_PAGE.rpId,
    WEBAUTHN_ORIGINS: PASSKEY_PAGE.origin
  })
  progress(`${engine}, ${rounds} rounds of ${duration} s (login, register and the flood ${loginDuration} s), ${connections} connections (login and register ${loginConnections}, flood ${floodConnections} + ${floodConnections}), BCRYPT_COST ${bcryptCost}`)

  const compareTimes = await bcryptCompareTimes()
  progress(`one bcrypt compare at cost ${bcryptCost}: ${median(compareTimes).toFixed(0)} ms`)

  // The service clients, made by the CLI before the server starts (PGlite serves one process at
  // a time): one for client credentials, one that exchanges users' tokens (RFC 8693), one that
  // introspects users' tokens (introspect, and introspect:users: a user's token is addressed to
  // JWT_AUDIENCE, docs/service-to-service.md), and a workload client (RFC 7523 §2.1) trusting the
  // workload issuer on 127.0.0.1 (test/workload-issuer.ts) for one service account, ES256 pinned.
  await cli(['migrate'])
  serviceClient = JSON.parse(await cli(['clients', 'create', '--name', 'bench', '--scope', 'orders:read', '--audience', 'https://orders.example.test', '--json'])) as typeof serviceClient
  exchangeClient = JSON.parse(await cli(['clients', 'create', '--name', 'bench-exchange', '--scope', 'payments:charge', '--audience', 'https://orders.example.test', '--exchange-to', 'https://payments.example.test', '--json'])) as typeof exchangeClient
  introspectClient = JSON.parse(await cli(['clients', 'create', '--name', 'bench-introspect', '--scope', 'introspect', '--scope', 'introspect:users', '--audience', 'https://gateway.example.test', '--json'])) as typeof introspectClient
  const issuer: WorkloadIssuer = await startWorkloadIssuer(teardownOnly, { now: () => new Date() })
  workloadClient = JSON.parse(await cli(['clients', 'create', '--name', 'bench-workload', '--scope', 'orders:read', '--audience', 'https://orders.example.test',
    '--trust-issuer', issuer.url, '--subject', WORKLOAD_SUBJECT, '--trust-alg', 'ES256', '--json'])) as typeof workloadClient

  // pgbench's table of its own in the bench's database (PostgreSQL only).
  const pgbench = engine === 'postgres' ? findPgbench() : undefined
  const prepared = pgbench === undefined ? undefined : await preparePgbench(serverEnv.DATABASE_URL!, folder)
  // The yardstick is a durable update: with synchronous_commit off it would not be one.
  const pgbenchAbsent = engine !== 'postgres'
    ? 'not measured: this run is on PGlite'
    : pgbench === undefined
      ? 'not measured: no pgbench'
      : prepared?.synchronousCommit === 'off' ? 'not measured: synchronous_commit is off on this server (not durable)' : undefined
  const pgbenchScript = pgbenchAbsent === undefined ? prepared?.script : undefined
  const pgbenchSeconds = Math.max(1, Math.round(duration))
  const pgbenchLatencies: number[] = []

  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const startedAt = performance.now()
  server = startServer({ ...serverEnv, PORT: String(port) }, serverArgs)
  const firstStartMs = await ready(server, base, startedAt, 60_000)
  const idleRss = rssMB(server.child.pid!)
  progress(`server ready in ${firstStartMs.toFixed(0)} ms (first start: a new signing key), RSS ${idleRss.toFixed(0)} MB`)

  const post = async (path: string, body: unknown): Promise<Record<string, unknown>> => {
    const res = await fetch(base + path, { method: 'POST', headers: json, body: JSON.stringify(body) })
    if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`)
    return await res.json() as Record<string, unknown>
  }
  const runId = randomBytes(3).toString('hex')
  let registered = 0
  const password = 'correct horse battery staple'
  const user = { username: `bench_${runId}`, email: `bench_${runId}@example.com`, password }
  await post('/api/auth/register', user)
  const credentials = JSON.stringify({ identifier: user.username, password })

  // Refresh tokens, each the head of its own session's chain: harvested from the logins the
  // bench makes anyway, topped up with POST /api/token when a round needs more.
  const pool: string[] = []
  const obtain = async (): Promise<string> => {
    const pair = await post('/api/token', { username: user.username, password }) as { access: string, refresh: string }
    pool.push(pair.refresh)
    return pair.access
  }
  const harvest = (client: Client): void => {
    client.setRequests([{
      method: 'POST',
      path: '/api/auth/login',
      headers: json,
      body: credentials,
      onResponse: (status, body) => { if (status === 200) pool.push((JSON.parse(body) as { refresh: string }).refresh) }
    }])
  }
  // Requests still queued for bcrypt when a run stops are still served: one more login waits
  // behind them (libuv's queue is first in, first out), so the next run starts on an idle server.
  const drain = obtain

  const detailBody = await (await fetch(`${base}/api/detail`, { headers: { authorization: `Bearer ${await obtain()}` } })).json()
  floor = await startFloor(detailBody)

  // One real ID token per connection (a code flow at the provider each, signed by its key), each
  // an account of its own; authgate does not make them single-use, so each is sent again and
  // again. The first sign-in of each makes its account (in the warm-up); then each signs in.
  const idTokens: string[] = []
  for (let i = 0; i < connections; i++) idTokens.push(await provider.idTokenFor(`bench-${i}`, { clientId: NATIVE_CLIENT, nonce: `bench-nonce-${i}` }))
  progress(`${idTokens.length} ID tokens from the provider at ${provider.issuer}`)

  // One passkey per connection, all the bench user's (test/soft-authenticator.ts signs for the
  // page's origin): the first added from a password session, the others from the aal2 session
  // of a sign-in by it, as a user adds one.
  const passkeys: SoftCredential[] = []
  const signInByPasskey = async (credential: SoftCredential): Promise<string> => {
    const { challenge_id: challengeId, options } = await post('/api/auth/passkeys/authentication/options', {}) as { challenge_id: string, options: { challenge: string } }
    return (await post('/api/auth/passkeys/authentication/verify', { challenge_id: challengeId, credential: assert(credential, options, PASSKEY_PAGE) })).access as string
  }
  let adding = await obtain()
  for (let i = 0; i < connections; i++) {
    const started = await fetch(`${base}/api/auth/passkeys/registration/options`, { method: 'POST', headers: { ...json, authorization: `Bearer ${adding}` }, body: '{}' })
    const { challenge_id: challengeId, options } = await started.json() as { challenge_id: string, options: { challenge: string, user: { id: string } } }
    const made = makePasskey(options, PASSKEY_PAGE)
    const added = await fetch(`${base}/api/auth/passkeys/registration/verify`, { method: 'POST', headers: { ...json, authorization: `Bearer ${adding}` }, body: JSON.stringify({ challenge_id: challengeId, credential: made.response }) })
    if (added.status !== 201) throw new Error(`adding a passkey: ${added.status} ${await added.text()}`)
    passkeys.push(made.credential)
    if (i === 0) adding = await signInByPasskey(made.credential)
  }
  progress(`${passkeys.length} passkeys of ${user.username}`)

  // The JWT bearer grant's assertions: the issuer's Kubernetes token (its shape, for authgate's
  // issuer) with a new jti, iat, nbf and exp each, signed ES256 in this process, one per request.
  const formHeaders = { 'content-type': 'application/x-www-form-urlencoded' }
  const { issuer: authgateIssuer } = await (await fetch(`${base}/.well-known/oauth-authorization-server`)).json() as { issuer: string }
  const makeAssertion = assertionMaker(issuer.current.ES256, decodeJwt(await issuer.kubernetesToken({ audience: authgateIssuer })), ASSERTION_LIFETIME_S)
  const jwtBearerBody = (): string => new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', client_id: workloadClient.client_id, assertion: makeAssertion() }).toString()
  const probe = await fetch(`${base}/oauth/token`, { method: 'POST', headers: formHeaders, body: jwtBearerBody() })
  if (probe.status !== 200) throw new Error(`the JWT bearer grant: ${probe.status} ${await probe.text()}`)
  workloadGrants++
  let workloadSent = 1
  const assertionUs = assertionCostUs(makeAssertion)
  progress(`JWT bearer grant: client ${workloadClient.client_id} trusts ${issuer.url} (ES256); one assertion costs ${assertionUs.toFixed(1)} µs to make here`)

  // The Django seed (BENCH_SEED=1): its own user, and one refresh chain per connection, each from
  // a sign-in of its own (POST /api/token); each chain goes on from round to round.
  let seedAbsent = await seedAbsence(seedFolder, seedWanted)
  const seedChains: string[] = []
  if (seedAbsent === undefined) {
    try {
      const seedStarted = performance.now()
      seed = await startSeed(seedFolder, await freePort())
      const seedPost = async (path: string, body: unknown): Promise<Record<string, string>> => {
        const res = await fetch(seed!.url + path, { method: 'POST', headers: json, body: JSON.stringify(body) })
        if (!res.ok) throw new Error(`the seed's ${path}: ${res.status} ${await res.text()}`)
        return await res.json() as Record<string, string>
      }
      await seedPost('/api/auth/register', user)
      // Two at a time: its two sync workers, each hashing PBKDF2.
      while (seedChains.length < connections) {
        const pairs = await Promise.all(Array.from({ length: Math.min(2, connections - seedChains.length) }, () => seedPost('/api/token', { username: user.username, password })))
        seedChains.push(...pairs.map((pair) => pair.refresh!))
      }
      progress(`the Django seed at ${seed.url}: set up, started, a user and ${seedChains.length} refresh chains in ${((performance.now() - seedStarted) / 1000).toFixed(1)} s`)
    } catch (error) {
      seedAbsent = `not measured: ${(error as Error).message}`
      progress(seedAbsent)
      await seed?.stop().catch((stopping: unknown) => progress(`the seed's stop.sh: ${(stopping as Error).message}`))
      seed = undefined
    }
  } else {
    progress(`the Django seed: ${seedAbsent}`)
  }

  let access = ''
  const bearer = (): Record<string, string> => ({ authorization: `Bearer ${access}` })
  const floorUrl = floor.url
  const basic = (client: typeof serviceClient): string => `Basic ${Buffer.from(`${client.client_id}:${client.client_secret}`).toString('base64')}`
  // POSTs of a form to `path`, as `client` with its secret in HTTP Basic (none: the form itself
  // authenticates); the same form each time, or one made for each request.
  const formPosts = (path: string, { client, form, onResponse }: {
    client?: typeof serviceClient
    form: Record<string, string> | (() => string)
    onResponse?: (status: number, body: string) => void
  }, seconds: number): Promise<Run> => load({
    url: `${base}${path}`,
    connections,
    duration: seconds,
    method: 'POST',
    setupClient: (c) => {
      c.setRequests([{
        method: 'POST',
        path,
        headers: { ...formHeaders, ...client === undefined ? {} : { authorization: basic(client) } },
        ...typeof form === 'function'
          ? { setupRequest: (request) => ({ ...request, body: form() }) }
          : { body: new URLSearchParams(form).toString() },
        onResponse
      }])
    }
  })
  const scenarios: Record<Exclude<Key, 'detailFlood' | 'loginFlood'>, ((seconds?: number) => Promise<Run>) | undefined> = {
    floor: (seconds = duration) => load({ url: `${floorUrl}/api/detail`, connections, duration: seconds, headers: bearer() }),
    detail: (seconds = duration) => load({ url: `${base}/api/detail`, connections, duration: seconds, headers: bearer() }),
    check: (seconds = duration) => load({ url: `${base}/api/auth/check`, connections, duration: seconds, headers: bearer() }),
    verify: (seconds = duration) => load({ url: `${base}/api/token/verify`, connections, duration: seconds, method: 'POST', headers: json, body: JSON.stringify({ token: access }) }),
    // Each connection follows its own session's chain: the answer's refresh token is the next
    // request's, and no token is sent twice (a resend would be reuse; counted, must be 0).
    refresh: async () => {
      while (pool.length < connections) await Promise.all(Array.from({ length: Math.min(4, connections - pool.length) }, obtain))
      const sent = new Set<string>()
      return await load({
        url: `${base}/api/token/refresh`,
        connections,
        duration,
        method: 'POST',
        headers: json,
        setupClient: (client) => {
          let token = pool.shift()!
          client.setRequests([{
            method: 'POST',
            path: '/api/token/refresh',
            headers: json,
            setupRequest: (request) => {
              if (sent.has(token)) refreshTrouble.resent++
              sent.add(token)
              return { ...request, body: JSON.stringify({ refresh: token }) }
            },
            onResponse: (status, body) => {
              if (status === 200) token = (JSON.parse(body) as { refresh: string }).refresh
              else refreshTrouble.failed++
            }
          }])
        }
      })
    },
    // A durable one-row update by pgbench on the same database: what PostgreSQL commits here.
    pgbench: pgbench === undefined || pgbenchScript === undefined
      ? undefined
      : async () => {
        const run = await pgbenchRun(pgbench, pgbenchArgs(pgbenchScript, connections, pgbenchSeconds), serverEnv.DATABASE_URL!, pgbenchSeconds)
        pgbenchLatencies.push(run.latencyMs)
        return run
      },
    // The Django seed's refresh, each connection its own chain (the answer's refresh token is the
    // next request's); gunicorn closes every connection, so each request opens its own.
    seedRefresh: seed === undefined
      ? undefined
      : (seconds = duration) => loadClosing({
          url: `${seed!.url}/api/token/refresh`,
          connections,
          duration: seconds,
          headers: json,
          chain: (i) => ({
            body: () => JSON.stringify({ refresh: seedChains[i] }),
            onResponse: (status, body) => { if (status === 200) seedChains[i] = (JSON.parse(body) as { refresh: string }).refresh }
          })
        }),
    // A service token (client_secret_basic): a client lookup and one signature, nothing written.
    oauthToken: (seconds = duration) => formPosts('/oauth/token', { client: serviceClient, form: { grant_type: 'client_credentials' } }, seconds),
    // A service acting for the bench user (RFC 8693): the user's token verified, its session
    // (cached), the client's policy, one signature; nothing written but the queued audit event.
    exchange: (seconds = duration) => formPosts('/oauth/token', {
      client: exchangeClient,
      form: {
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        subject_token: access,
        subject_token_type: 'urn:ietf:params:oauth:token-type:access_token'
      }
    }, seconds),
    // A gateway asking whether the bench user's token may pass (RFC 7662): the client's secret,
    // the token verified, its session's user; nothing written. Only active answers count as the
    // path measured (an inactive one is counted and breaks the scenario).
    introspect: (seconds = duration) => formPosts('/api/token/introspect', {
      client: introspectClient,
      form: { token: access },
      onResponse: (status, body) => { if (status === 200 && !body.startsWith('{"active":true')) introspectTrouble.inactive++ }
    }, seconds),
    // A workload's own token by the JWT bearer grant (RFC 7523 §2.1): a fresh assertion each
    // request, verified against the issuer's cached JWKS, its jti spent (one row), one signature.
    jwtBearer: (seconds = duration) => formPosts('/oauth/token', {
      form: () => {
        workloadSent++
        return jwtBearerBody()
      },
      onResponse: (status) => { if (status === 200) workloadGrants++ }
    }, seconds),
    // A native app's sign-in: the ID token's signature against the provider's cached JWKS, the
    // identity's account, a session; no bcrypt.
    idToken: (seconds = duration) => {
      let next = 0
      return load({
        url: `${base}/api/auth/oidc/corp/id-token`,
        connections,
        duration: seconds,
        method: 'POST',
        headers: json,
        setupClient: (client) => {
          const i = next++ % idTokens.length
          client.setRequests([{ method: 'POST', path: '/api/auth/oidc/corp/id-token', headers: json, body: JSON.stringify({ id_token: idTokens[i], nonce: `bench-nonce-${i}` }) }])
        }
      })
    },
    // A sign-in by a passkey: the options (a challenge, one row), then the answer signed by the
    // connection's own passkey (its counter moves on with each), verified, a session started.
    passkey: (seconds = duration) => {
      let next = 0
      return load({
        url: `${base}/api/auth/passkeys/authentication/options`,
        connections,
        duration: seconds,
        method: 'POST',
        headers: json,
        setupClient: (client) => {
          const credential = passkeys[next++ % passkeys.length]!
          type Context = { challengeId?: string, options?: { challenge: string } }
          client.setRequests([
            {
              method: 'POST',
              path: '/api/auth/passkeys/authentication/options',
              headers: json,
              body: '{}',
              onResponse: (status, body, context) => {
                if (status !== 200) return
                const answer = JSON.parse(body) as { challenge_id: string, options: { challenge: string } }
                Object.assign(context, { challengeId: answer.challenge_id, options: answer.options })
              }
            },
            {
              method: 'POST',
              path: '/api/auth/passkeys/authentication/verify',
              headers: json,
              setupRequest: (request, context) => {
                const { challengeId, options } = context as Context
                return { ...request, body: JSON.stringify({ challenge_id: challengeId, credential: assert(credential, options!, PASSKEY_PAGE) }) }
              }
            }
          ])
        }
      })
    },
    login: async () => {
      const run = await load({ url: `${base}/api/auth/login`, connections: loginConnections, duration: loginDuration, method: 'POST', timeout: 30, setupClient: harvest })
      await drain()
      return run
    },
    register: async () => {
      const run = await load({
        url: `${base}/api/auth/register`,
        connections: loginConnections,
        duration: loginDuration,
        method: 'POST',
        timeout: 30,
        setupClient: (client) => {
          client.setRequests([{
            method: 'POST',
            path: '/api/auth/register',
            headers: json,
            setupRequest: (request) => {
              const username = `bench_${runId}_${registered++}`
              return { ...request, body: JSON.stringify({ username, email: `${username}@example.com`, password }) }
            }
          }])
        }
      })
      await drain()
      return run
    },
    detailAlone: () => load({ url: `${base}/api/detail`, connections: floodConnections, duration: loginDuration, headers: bearer() })
  }
  const flood = async (): Promise<void> => {
    const [loginRun, detailRun] = await Promise.all([
      load({ url: `${base}/api/auth/login`, connections: floodConnections, duration: loginDuration, method: 'POST', timeout: 30, setupClient: harvest }),
      load({ url: `${base}/api/detail`, connections: floodConnections, duration: loginDuration, headers: bearer() })
    ])
    runs.loginFlood.push(loginRun)
    runs.detailFlood.push(detailRun)
    await drain()
  }

  // Warm-up, not measured: the JIT, the pool and the caches settle first.
  access = await obtain()
  const introspected = await fetch(`${base}/api/token/introspect`, { method: 'POST', headers: { ...formHeaders, authorization: basic(introspectClient) }, body: new URLSearchParams({ token: access }).toString() })
  const introspection = await introspected.text()
  if (introspected.status !== 200 || !introspection.startsWith('{"active":true')) throw new Error(`introspection of the bench user's token: ${introspected.status} ${introspection}`)
  for (const key of ['floor', 'detail', 'check', 'verify', 'seedRefresh', 'oauthToken', 'exchange', 'introspect', 'jwtBearer', 'idToken', 'passkey'] as const) await scenarios[key]?.(1)

  // The server's VmRSS after every scenario of every round (issue 31: at most 150 MB after each).
  const rssAfter: Array<{ key: Key | 'flood', round: number, mb: number }> = []
  const order = ['floor', 'detail', 'check', 'verify', 'refresh', 'pgbench', 'seedRefresh', 'oauthToken', 'exchange', 'introspect', 'jwtBearer', 'idToken', 'passkey', 'login', 'register', 'detailAlone'] as const
  const last = (key: Key, digits = 0): string => runs[key].length === 0 ? '-' : runs[key].at(-1)!.rps.toFixed(digits)
  for (let round = 1; round <= rounds; round++) {
    // An access token lives 5 minutes by default: each round takes a fresh one.
    access = await obtain()
    for (const key of order) {
      const scenario = scenarios[key]
      if (scenario === undefined) continue
      runs[key].push(await scenario())
      rssAfter.push({ key, round, mb: rssMB(server.child.pid!) })
    }
    await flood()
    rssAfter.push({ key: 'flood', round, mb: rssMB(server.child.pid!) })
    progress(`round ${round}/${rounds}: floor ${last('floor')}, detail ${last('detail')}, check ${last('check')}, refresh ${last('refresh')}, pgbench ${last('pgbench')} tps, seed refresh ${last('seedRefresh')}, service token ${last('oauthToken')}, exchange ${last('exchange')}, introspection ${last('introspect')}, JWT bearer ${last('jwtBearer')}, id-token ${last('idToken')}, passkey ${last('passkey')}, login ${last('login', 1)} req/s; RSS at most ${Math.max(...rssAfter.filter((r) => r.round === round).map((r) => r.mb)).toFixed(0)} MB`)
  }
  const endRss = rssMB(server.child.pid!)
  await seed?.stop()
  seed = undefined
  const rssMax = rssAfter.reduce((max, r) => r.mb > max.mb ? r : max, rssAfter[0]!)
  const labels: Record<Key | 'flood', string> = {
    floor: 'the floor',
    detail: 'detail',
    check: 'check',
    verify: 'verify',
    refresh: 'refresh',
    pgbench: 'pgbench',
    seedRefresh: 'the seed\'s refresh',
    oauthToken: 'service token',
    exchange: 'token exchange',
    introspect: 'introspection',
    jwtBearer: 'JWT bearer',
    idToken: 'ID-token sign-in',
    passkey: 'passkey sign-in',
    login: 'login',
    register: 'register',
    detailAlone: 'detail alone',
    detailFlood: 'the login flood',
    loginFlood: 'the login flood',
    flood: 'the login flood'
  }
  const rssByScenario = new Map<Key | 'flood', number>()
  for (const { key, mb } of rssAfter) rssByScenario.set(key, Math.max(rssByScenario.get(key) ?? 0, mb))
  progress(`RSS after each scenario, the largest of the rounds: ${[...rssByScenario].map(([key, mb]) => `${labels[key]} ${mb.toFixed(0)}`).join(', ')} MB`)

  // One write per JWT bearer grant (its jti spent), no more: the workload client's rows lie
  // between the grants answered and the requests sent (those in flight when a run stopped were
  // served, unseen). PostgreSQL only: PGlite's folder is the server's while it runs.
  let spentRows: number | undefined
  if (engine === 'postgres') {
    const client = new pg.Client({ connectionString: serverEnv.DATABASE_URL })
    await client.connect()
    try {
      const { rows } = await client.query<{ n: string }>('select count(*) as n from oauth_client_assertions where client_id = $1', [workloadClient.client_id])
      spentRows = Number(rows[0]!.n)
    } finally {
      await client.end()
    }
    progress(`JWT bearer: ${spentRows} jti rows for ${workloadGrants} grants answered, ${workloadSent} requests sent`)
  }
  // Measured before and after the rounds: the median of both sets is the run's compare.
  compareTimes.push(...await bcryptCompareTimes())
  const compareMs = median(compareTimes)
  await floor.stop()
  await server.stop()
  server = undefined

  // Start time on a migrated database with its signing key: spawn to the first 200 of /health/ready.
  const startTimes: number[] = []
  if (engine === 'postgres') {
    for (let i = 0; i < starts; i++) {
      const startPort = await freePort()
      const t0 = performance.now()
      const started = startServer({ ...serverEnv, PORT: String(startPort) }, serverArgs)
      try {
        startTimes.push(await ready(started, `http://127.0.0.1:${startPort}`, t0, 30_000))
      } finally {
        await started.stop()
      }
    }
    progress(`start to ready: ${startTimes.map((t) => t.toFixed(0)).join(', ')} ms`)
  }

  // A scenario with any non-2xx answer or error, or a round without a 2xx answer, is broken:
  // it gives no figure.
  const names: Record<Key, [string, number]> = {
    floor: ['GET /api/detail on bare Fastify (the floor, own process)', connections],
    detail: ['GET /api/detail (Bearer)', connections],
    check: ['GET /api/auth/check (Bearer, forward-auth)', connections],
    verify: ['POST /api/token/verify', connections],
    refresh: ['POST /api/token/refresh (rotation, a chain per connection)', connections],
    pgbench: [`pgbench on the same database: update bench_counter set n = n + 1 where id = random(1, 32), -M prepared, -j 2, durable (req/s: its tps; no percentiles, its average latency ${median(pgbenchLatencies).toFixed(2)} ms)`, connections],
    seedRefresh: ['the Django seed: POST /api/token/refresh (gunicorn, 2 sync workers; a chain per connection; a new TCP connection per request, gunicorn closes each)', connections],
    oauthToken: ['POST /oauth/token (client_credentials, client_secret_basic)', connections],
    exchange: ['POST /oauth/token (token exchange of a user\'s token, client_secret_basic)', connections],
    introspect: ['POST /api/token/introspect (the bench user\'s token, client_secret_basic; every answer active)', connections],
    jwtBearer: ['POST /oauth/token (JWT bearer grant, RFC 7523: a fresh ES256 assertion of a workload issuer per request)', connections],
    idToken: ['POST /api/auth/oidc/corp/id-token (a local OpenID provider\'s ID token, an account per connection)', connections],
    passkey: ['POST /api/auth/passkeys/authentication/options, then …/verify (a passkey per connection; two requests a sign-in)', connections],
    login: [`POST /api/auth/login (bcrypt cost ${bcryptCost})`, loginConnections],
    register: ['POST /api/auth/register (unique names)', loginConnections],
    detailAlone: ['GET /api/detail alone (flood reference)', floodConnections],
    detailFlood: ['GET /api/detail during the login flood', floodConnections],
    loginFlood: ['POST /api/auth/login: the flood', floodConnections]
  }
  const problems: string[] = []
  const broken = new Set<Key>()
  for (const key of Object.keys(runs) as Key[]) {
    const non2xx = runs[key].reduce((sum, run) => sum + run.non2xx, 0)
    const errors = runs[key].reduce((sum, run) => sum + run.errors, 0)
    const silent = runs[key].filter((run) => run.answers - run.non2xx === 0).length
    if (non2xx > 0 || errors > 0 || silent > 0) {
      broken.add(key)
      const statuses = new Map<number, number>()
      for (const run of runs[key]) for (const [status, count] of run.statuses) statuses.set(status, (statuses.get(status) ?? 0) + count)
      const by = [...statuses].map(([status, count]) => `${count} × ${status}`).join(', ')
      problems.push(`${names[key][0]}: ${non2xx} non-2xx answers${by === '' ? '' : ` (${by})`}, ${errors} errors, ${silent} rounds without a 2xx answer`)
    }
  }
  if (refreshTrouble.resent > 0 || refreshTrouble.failed > 0) {
    broken.add('refresh')
    problems.push(`refresh chains: ${refreshTrouble.resent} tokens sent twice, ${refreshTrouble.failed} refreshes refused (both must be 0)`)
  }
  if (introspectTrouble.inactive > 0) {
    broken.add('introspect')
    problems.push(`introspection: ${introspectTrouble.inactive} answers not active (the bench user's live token: must be 0)`)
  }
  if (spentRows !== undefined && (spentRows < workloadGrants || spentRows > workloadSent)) {
    broken.add('jwtBearer')
    problems.push(`JWT bearer grant: ${spentRows} jti rows for ${workloadGrants} grants answered and ${workloadSent} requests sent (one row per grant: between the two)`)
  }

  const rps = (key: Key): number => median(runs[key].map((run) => run.rps))
  const p = (key: Key, field: 'p50' | 'p99'): number => median(runs[key].map((run) => run[field]))
  const floorRps = rps('floor')
  const ms = (v: number): string => Number.isNaN(v) ? '—' : v.toFixed(2)
  const benchCpu = (key: Key): string => median(runs[key].map((run) => run.benchCpuUs ?? Number.NaN)).toFixed(0)
  // A scenario not measured in this run (pgbench, the seed) has no row; its figure says why.
  const scenarioRows: ScenarioRow[] = (Object.keys(runs) as Key[]).filter((key) => runs[key].length > 0).map((key) => ({
    scenario: names[key][0],
    connections: names[key][1],
    'req/s': rps(key) >= 100 ? rps(key).toFixed(0) : rps(key).toFixed(1),
    'vs floor': ratio(rps(key) / floorRps),
    'p50 ms': ms(p(key, 'p50')),
    'p99 ms': ms(p(key, 'p99')),
    'req/s by round': runs[key].map((run) => run.rps >= 100 ? run.rps.toFixed(0) : run.rps.toFixed(1)).join(' '),
    non2xx: runs[key].reduce((sum, run) => sum + run.non2xx, 0),
    errors: runs[key].reduce((sum, run) => sum + run.errors, 0)
  }))

  const figure = (name: string, needs: Key[], value: () => number, format: (v: number) => string, target: string, met: (v: number) => boolean): Figure => {
    const bad = needs.filter((key) => broken.has(key))
    if (bad.length > 0) return { figure: name, measured: `BROKEN (${bad.join(', ')})`, target, met: undefined }
    const v = value()
    return { figure: name, measured: format(v), target, met: met(v) }
  }
  const figures: Figure[] = [
    figure('detail req/s ÷ floor req/s', ['detail', 'floor'], () => rps('detail') / floorRps, ratio, '>= 0.5', (v) => v >= 0.5),
    figure('check (forward-auth) req/s ÷ floor req/s', ['check', 'floor'], () => rps('check') / floorRps, ratio, '>= 0.5', (v) => v >= 0.5),
    figure('refresh req/s ÷ floor req/s', ['refresh', 'floor'], () => rps('refresh') / floorRps, ratio, '>= 0.08', (v) => v >= 0.08),
    pgbenchAbsent === undefined
      ? figure('refresh req/s ÷ pgbench tps (a durable one-row update, the same database, the same rounds)', ['refresh', 'pgbench'], () => rps('refresh') / rps('pgbench'),
        (v) => `${ratio(v)} (${rps('refresh').toFixed(0)} ÷ ${rps('pgbench').toFixed(0)})`, '>= 0.4', (v) => v >= 0.4)
      : { figure: 'refresh req/s ÷ pgbench tps (a durable one-row update, the same database, the same rounds)', measured: pgbenchAbsent, target: '>= 0.4', met: undefined },
    seedAbsent === undefined
      ? figure('refresh req/s ÷ the Django seed\'s refresh req/s (the same rounds)', ['refresh', 'seedRefresh'], () => rps('refresh') / rps('seedRefresh'),
        (v) => `${ratio(v)} (${rps('refresh').toFixed(0)} ÷ ${rps('seedRefresh').toFixed(0)})`, '>= 2', (v) => v >= 2)
      : { figure: 'refresh req/s ÷ the Django seed\'s refresh req/s (the same rounds)', measured: seedAbsent, target: '>= 2', met: undefined },
    figure('service token (POST /oauth/token) req/s ÷ floor req/s', ['oauthToken', 'floor'], () => rps('oauthToken') / floorRps, ratio, '>= 0.15', (v) => v >= 0.15),
    figure('token exchange req/s ÷ floor req/s', ['exchange', 'floor'], () => rps('exchange') / floorRps, ratio, '>= 0.1', (v) => v >= 0.1),
    figure('token exchange req/s ÷ service token req/s', ['exchange', 'oauthToken'], () => rps('exchange') / rps('oauthToken'), ratio, '>= 0.5', (v) => v >= 0.5),
    figure(`introspection (POST /api/token/introspect) req/s, absolute, on this machine's ${cores} cores`, ['introspect'], () => rps('introspect'), (v) => v.toFixed(0),
      cores === 2 ? '>= 5000 (on 2 cores)' : `>= 5000 (set for 2 cores; this machine has ${cores})`, (v) => v >= 5000),
    figure('introspection req/s ÷ floor req/s', ['introspect', 'floor'], () => rps('introspect') / floorRps, ratio, '>= 0.3', (v) => v >= 0.3),
    figure('JWT bearer grant (RFC 7523, workload identity) req/s ÷ floor req/s', ['jwtBearer', 'floor'], () => rps('jwtBearer') / floorRps, ratio, '>= 0.05', (v) => v >= 0.05),
    figure('ID-token sign-in (POST /api/auth/oidc/<name>/id-token) req/s ÷ floor req/s', ['idToken', 'floor'], () => rps('idToken') / floorRps, ratio, '>= 0.02', (v) => v >= 0.02),
    figure('passkey sign-in (options + verify) req/s ÷ floor req/s', ['passkey', 'floor'], () => rps('passkey') / floorRps, ratio, '>= 0.02', (v) => v >= 0.02),
    figure(`login req/s × one bcrypt compare (${compareMs.toFixed(0)} ms) ÷ (1000 × ${cores} cores)`, ['login'],
      () => rps('login') * compareMs / (1000 * cores), ratio, '>= 0.9', (v) => v >= 0.9),
    figure('detail p99 during the login flood ÷ detail p99 alone', ['detailFlood', 'detailAlone', 'loginFlood'],
      () => p('detailFlood', 'p99') / p('detailAlone', 'p99'), ratio, '<= 1.5', (v) => v <= 1.5),
    figure('RSS after every scenario of every round: the largest', [], () => rssMax.mb,
      (v) => `${v.toFixed(0)} MB, after ${labels[rssMax.key]} in round ${rssMax.round} (after round 1's first scenario: ${rssAfter[0]!.mb.toFixed(0)} MB)`, '<= 150 MB', (v) => v <= 150),
    figure('RSS at the end of the run (after all scenarios)', [], () => endRss, (v) => `${v.toFixed(0)} MB (idle after start: ${idleRss.toFixed(0)} MB)`, '<= 150 MB', (v) => v <= 150),
    engine === 'postgres'
      ? figure(`start to /health/ready 200 on PostgreSQL, migrated (median of ${starts})`, [], () => starts > 0 ? median(startTimes) : Number.NaN,
        (v) => Number.isNaN(v) ? 'not measured (BENCH_STARTS=0)' : `${(v / 1000).toFixed(3)} s (${startTimes.map((t) => (t / 1000).toFixed(3)).join(', ')})`, '<= 1 s', (v) => v <= 1000)
      : { figure: 'start to /health/ready 200 on PostgreSQL, migrated', measured: 'not measured: this run is on PGlite', target: '<= 1 s', met: undefined }
  ]
  if (figures.at(-1)!.measured.startsWith('not measured (BENCH')) figures.at(-1)!.met = undefined

  const seconds = (performance.now() - began) / 1000
  const m = machine()
  console.log(`\nauthgate on ${engine}, node ${m.node}, ${m.cores} cores (${m.cpu}), ${rounds} rounds of ${duration} s, medians; whole run ${seconds.toFixed(0)} s`)
  console.table(scenarioRows)
  console.table(figures.map((f) => ({ figure: f.figure, measured: f.measured, target: f.target, met: yesNo(f.met) })))
  if (problems.length > 0) {
    console.error(`\n!!! BROKEN SCENARIOS: their figures are not given\n${problems.map((line) => `!!! ${line}`).join('\n')}\n`)
    exitCode = 1
  }

  await writeBenchmarks(benchmarksPath, {
    machine: m,
    engine: engine === 'postgres' ? 'PostgreSQL (a database of its own, dropped at the end)' : 'PGlite (embedded, in a temporary folder)',
    date: new Date().toISOString(),
    command: command(),
    settings: `${rounds} rounds of ${duration} s (login, register and the flood ${loginDuration} s), ${connections} connections (login and register ${loginConnections}; flood ${floodConnections} login + ${floodConnections} detail), BCRYPT_COST ${bcryptCost}, NODE_ENV=production, LOG_LEVEL=warn, RATE_LIMIT_ENABLED=false`,
    method: [
      'One server process (`node src/start.js`, as `npm start` runs it) and the floor (bench/floor.ts: bare Fastify, the same version, one GET route with /api/detail\'s response schema answering the same body) in its own process; autocannon runs in the bench process over 127.0.0.1.',
      'Each round runs every scenario once, in the same order (floor, detail, check, verify, refresh, pgbench, the seed\'s refresh, service token, token exchange, introspection, JWT bearer grant, ID-token sign-in, passkey sign-in, login, register, detail alone, then the flood); the tables give medians over the rounds, and the ratios are ratios of those medians, so the drift of a shared machine falls on both sides. The warm-up before the rounds (1 s each, not counted): floor, detail, check, verify, the seed\'s refresh, service token, token exchange, introspection, JWT bearer grant, ID-token and passkey sign-in.',
      'req/s counts 2xx answers after the first second of a run (the bcrypt queue fills first); p50 and p99 are of 2xx answers, timed per request with hrtime. Any non-2xx answer or error marks the scenario broken and withholds its figure. pgbench\'s req/s is its own tps.',
      'Refresh: each connection starts from a session of its own (refresh tokens harvested from the bench\'s logins, topped up with POST /api/token), sends its current refresh token, and takes the rotated one from the answer for its next request: no token is sent twice (counted) and no refresh is refused.',
      pgbenchAbsent === undefined
        ? `pgbench (${pgbench}), right after the refresh scenario in each round, on the bench's own PostgreSQL database (the same server and database the service uses): a table of its own, \`bench_counter (id int primary key, n bigint)\` with 32 rows, and the script \`\\set id random(1, 32)\` / \`update bench_counter set n = n + 1 where id = :id;\`, run as \`pgbench -n -M prepared -c ${connections} -j 2 -T ${pgbenchSeconds}\` with the server's default synchronous_commit (${prepared?.synchronousCommit}, read in the database before the rounds; on: every transaction durable before its answer, as a refresh is). Its figure: refresh req/s ÷ pgbench tps (tps without the initial connection time, as pgbench prints it; the median of the rounds).`
        : `pgbench: ${pgbenchAbsent}.`,
      seedAbsent === undefined
        ? `The Django seed (../shared/seed-django/, BENCH_SEED=1): set up with its own \`SKIP_APT=1 ./setup.sh\` and started with its \`start.sh\` (gunicorn, its default 2 sync workers, DEBUG off, DB_CONN_MAX_AGE=60, on a free port of 127.0.0.1), stopped with its \`stop.sh\`. Before the rounds, a user registered there and one sign-in (POST /api/token) per connection (${connections}); each connection then posts its current refresh token to POST /api/token/refresh and takes the one in the answer for its next request (simplejwt rotates; the seed keeps no record, so it writes nothing), its chain going on from round to round. gunicorn's sync workers close the connection after every answer, which autocannon miscounts (it writes the next request on the closing socket), so this scenario has its own loop (bench/load.ts, loadClosing): ${connections} connections, each one request at a time on a new TCP connection (a bare socket, the request written whole, the answer read to gunicorn's close), counted as autocannon's are and timed from the connect to the close. The load generator shares the cores with both servers: the bench process spent ${benchCpu('seedRefresh')} µs of CPU per answer of the seed (a connection each) and ${benchCpu('refresh')} µs per answer of authgate's refresh (autocannon, connections kept). Its figure: authgate's refresh req/s ÷ the seed's.`
        : `The Django seed's refresh: ${seedAbsent}.`,
      `Introspection: a client made by \`npm run clients -- create --scope introspect --scope introspect:users\` before the server starts (introspect:users: the bench user's token is addressed to JWT_AUDIENCE, docs/service-to-service.md), every request POST /api/token/introspect with \`token=\` the round's access token of the bench user (a form) and the client's secret in HTTP Basic: authgate authenticates the client, verifies the token, finds its session's user and answers active with the user's fields. Every answer is checked to be \`{"active":true,…}\` (an inactive one breaks the scenario). Two figures: its req/s as it is (issue 31: at least 5,000 on 2 cores; this machine has ${cores}), and ÷ floor.`,
      `JWT bearer grant (RFC 7523 §2.1, workload identity): test/workload-issuer.ts's issuer in the bench process on 127.0.0.1 (discovery and JWKS), and a workload client made by \`npm run clients -- create --trust-issuer <its URL> --subject ${WORKLOAD_SUBJECT} --trust-alg ES256\` before the server starts. Every request is POST /oauth/token with grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer, client_id and a fresh assertion made in autocannon's setupRequest: the issuer's Kubernetes token shape for authgate's issuer with a new jti, iat = nbf = now and exp = now + ${ASSERTION_LIFETIME_S} s, signed ES256 by the issuer's key (node:crypto, synchronously; ES256 rather than RS256, whose signing is slower; the issuer has no EdDSA key). Making one costs ${assertionUs.toFixed(1)} µs in the bench process (median of 5 batches of 500), ${(100 * rps('jwtBearer') * assertionUs / 1e6).toFixed(1)} % of one core at the measured rate. authgate verifies it against the issuer's JWKS (read at the first grant, cached), spends its jti (the one write the design needs, RFC 7523 §3), and signs the client's token.${spentRows === undefined ? '' : ` Checked after the rounds: ${spentRows} spent jti rows of the workload client for ${workloadGrants} grants answered and ${workloadSent} requests sent (those in flight when a run stopped were served unseen): one row per grant.`} Its target, 0.05 of the floor, is issue 31's, set knowing each grant commits a write, as a refresh does.`,
      `ID-token sign-in: panva's oidc-provider (as test/oidc-provider.ts starts it) in the bench process on 127.0.0.1, configured as the provider \`corp\`; before the rounds, one ID token per connection (${connections}), each of its own account, got by a real code flow for a native client listed in OIDC_CORP_EXTRA_AUDIENCES. Each connection posts its token (and its nonce) again and again: authgate checks the signature against the provider's JWKS (fetched once, cached), finds the account by (issuer, subject) and starts a session. The accounts are made in the warm-up.`,
      `Passkey sign-in: WEBAUTHN_RP_ID=localhost; before the rounds, one passkey per connection (${connections}), all of the bench user's, made by test/soft-authenticator.ts (ES256, attestation none) through the registration endpoints. Each connection asks for options (a challenge, one row), then posts the answer its own passkey signs (its counter one ahead each time): authgate spends the challenge, checks the signature, takes the counter and records the sign-in by one guarded UPDATE, and starts a session. req/s counts both requests: a sign-in is two.`,
      'Service token: one client (made by `npm run clients -- create` before the server starts), every request POST /oauth/token with grant_type=client_credentials and its secret in HTTP Basic.',
      'Token exchange: another client (with --exchange-to), every request POST /oauth/token with grant_type=urn:ietf:params:oauth:grant-type:token-exchange, the round\'s access token of the bench user as subject_token and the client\'s secret in HTTP Basic.',
      'Login: one user; register: a unique username per request. After each, one more login waits behind whatever bcrypt work is still queued, so the next scenario starts on an idle server.',
      `Login figure: login req/s × one bcrypt.compare at cost ${bcryptCost} (median of 10, timed one at a time in the bench process before and after the rounds: ${compareMs.toFixed(1)} ms) ÷ (1000 × ${cores} cores): the share of the machine's CPU time the logins spend in bcrypt.`,
      `Flood: ${floodConnections} connections logging in and ${floodConnections} reading /api/detail at the same time; its p99 against detail alone with ${floodConnections} connections in the same round.`,
      'Targets against the floor for every grant and sign-in path (issue 31): service token 0.15, token exchange 0.1 (and half of the service token), JWT bearer 0.05, ID-token sign-in 0.02, passkey sign-in 0.02 (a sign-in is two requests, both counted).',
      'RSS: VmRSS of the server process from /proc after every scenario of every round (pgbench and the seed\'s refresh included, the server idle then; the flood once, after both its halves), after the last scenario, and right after it started; the target applies to the largest, named with its scenario and round. MB = 10^6 bytes.',
      engine === 'postgres'
        ? `Start: ${starts} more starts of \`node src/start.js\` on the migrated database (signing key present), each timed from spawn to the first 200 of /health/ready (polled every 15 ms), then SIGTERM.`
        : 'Start: measured on PostgreSQL only (run with DATABASE_URL set).'
    ],
    scenarios: scenarioRows,
    figures,
    problems,
    seconds
  })
  console.log(`\nwritten: ${benchmarksPath}`)
} catch (error) {
  exitCode = 1
  console.error(error)
  if (server !== undefined) console.error(`server output:\n${server.output()}`)
} finally {
  await floor?.stop()
  await server?.stop()
  await seed?.stop().catch((error: unknown) => console.error(error))
  for (const close of providerClosers) await close()
  await rm(folder, { recursive: true, force: true })
  if (pgDatabase !== undefined) await admin(`drop database if exists ${pgDatabase} with (force)`)
}
process.exitCode = exitCode
