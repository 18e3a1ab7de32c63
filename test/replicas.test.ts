import pg from 'pg'
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { runCli } from '../src/cli.ts'
import { freshDatabase, SECRET_KEY, serverEnv, uniqueUser } from './helper.ts'
import { startServer } from './server-process.ts'

// Two processes of `node src/server.ts` on one PostgreSQL and one Redis: how replicas run
// behind a gateway. PGlite serves one process only.
t.test('two replicas on one PostgreSQL and one Redis', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'replicas share a PostgreSQL: checked in the PostgreSQL run'
}, async (t) => {
  const database = await freshDatabase(t)
  const env = serverEnv(database, { NODE_ENV: 'production', REDIS_URL: 'redis://127.0.0.1:6379', RATE_LIMIT_ENABLED: 'true', RATE_LIMIT_IDENTIFIER_MAX: '3' })
  // Started together on an empty database: both migrate and make the first key at once.
  const replicas = [startServer(env), startServer(env)]
  t.teardown(() => { for (const replica of replicas) replica.child.kill('SIGKILL') })
  const [a, b] = await Promise.all(replicas.map((replica) => replica.listening)) as [string, string]
  const post = (base: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })

  t.test('one signing key, the same JWKS on both', async (t) => {
    const db = new pg.Client({ connectionString: database.DATABASE_URL })
    await db.connect()
    t.teardown(() => db.end())
    t.equal((await db.query('select count(*)::int as n from signing_keys')).rows[0].n, 1)
    const [jwksA, jwksB] = await Promise.all([a, b].map(async (base) => await (await fetch(`${base}/.well-known/jwks.json`)).json() as { keys: unknown[] }))
    t.same(jwksA, jwksB)
    t.equal(jwksA?.keys.length, 1)
  })

  const user = uniqueUser()
  t.equal((await post(a, '/api/auth/register', user)).status, 201)
  const signIn = async (base: string) => await (await post(base, '/api/auth/login', { identifier: user.username, password: user.password })).json() as { access: string, refresh: string }

  t.test('concurrent refreshes of one token across the replicas yield one pair', async (t) => {
    const { refresh } = await signIn(a)
    const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => post(i % 2 === 0 ? a : b, '/api/token/refresh', { refresh })))
    t.ok(answers.every((res) => res.status === 200), `statuses: ${answers.map((res) => res.status).join(' ')}`)
    const pairs = new Set(await Promise.all(answers.map(async (res) => JSON.stringify(await res.json()))))
    t.equal(pairs.size, 1, 'every answer is the same child pair (the reuse grace)')
  })

  // docs/operations.md: refused on the replica that ended it at once, on every other within a
  // second (the notification travels on its own connection: it may land just after the answer).
  t.test('a logout on one replica is refused on the other within a second', async (t) => {
    const { access } = await signIn(b)
    const bearer = { authorization: `Bearer ${access}` }
    t.equal((await fetch(`${b}/api/detail`, { headers: bearer })).status, 200)
    t.equal((await post(a, '/api/auth/logout', {}, bearer)).status, 204)
    t.equal((await fetch(`${a}/api/detail`, { headers: bearer })).status, 401, 'at once on the replica that ended it')
    const ended = Date.now()
    let refused = false
    while (!refused && Date.now() - ended < 1000) {
      refused = (await fetch(`${b}/api/detail`, { headers: bearer })).status === 401
      if (!refused) await sleep(10)
    }
    t.ok(refused, `refused on the other within a second (${Date.now() - ended} ms)`)
    t.equal((await fetch(`${b}/api/auth/check`, { headers: bearer })).status, 401)
  })

  t.test('rate limits are shared through Redis', async (t) => {
    const account = uniqueUser().username
    const attempt = (base: string) => post(base, '/api/auth/login', { identifier: account, password: 'not a password of anyone' })
    t.equal((await attempt(a)).status, 401)
    t.equal((await attempt(b)).status, 401)
    t.equal((await attempt(a)).status, 401)
    const limited = await attempt(b)
    t.equal(limited.status, 429)
    t.match(await limited.json(), { code: 'rate_limited' })
  })

  t.test('a client disabled by the CLI is refused at introspection and check on both replicas within a second; enabled, taken again', async (t) => {
    const cli = async (...args: string[]) => {
      const result = await runCli(['clients', ...args], { ...database, SECRET_KEY })
      if (result.code !== 0) throw new Error(result.stderr)
      return result.stdout
    }
    const ORDERS = 'https://orders.example.test'
    const orders = JSON.parse(await cli('create', '--name', 'orders', '--scope', 'orders:read', '--audience', ORDERS, '--json')) as { client_id: string, client_secret: string }
    // Introspection answers a client for the tokens addressed to it: this gateway sees all (issue 26).
    const gateway = JSON.parse(await cli('create', '--name', 'gateway', '--scope', 'introspect', '--scope', 'introspect:all', '--audience', 'https://gateway.example.test', '--json')) as { client_id: string, client_secret: string }
    const basicOf = (c: { client_id: string, client_secret: string }) => `Basic ${Buffer.from(`${c.client_id}:${c.client_secret}`).toString('base64')}`
    const form = (base: string, path: string, body: string, authorization: string) =>
      fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization }, body })
    const { access_token: token } = await (await form(a, '/oauth/token', 'grant_type=client_credentials', basicOf(orders))).json() as { access_token: string }
    const check = async (base: string) => (await fetch(`${base}/api/auth/check?audience=${encodeURIComponent(ORDERS)}&scope=orders:read`, { headers: { authorization: `Bearer ${token}` } })).status
    const active = async (base: string) => ((await (await form(base, '/api/token/introspect', `token=${token}`, basicOf(gateway))).json()) as { active: boolean }).active
    // Both replicas read the client once, and keep it.
    for (const base of [a, b]) {
      for (let i = 0; i < 2; i++) {
        t.equal(await check(base), 204)
        t.equal(await active(base), true)
      }
    }
    /** Milliseconds until every replica answers `expected` for the token at check and introspection, polling; Infinity past a second. */
    const seenWithin = async (status: number, isActive: boolean): Promise<number> => {
      const started = performance.now()
      for (;;) {
        const answers = await Promise.all([a, b].flatMap((base) => [check(base).then((s) => s === status), active(base).then((x) => x === isActive)]))
        if (answers.every(Boolean)) return performance.now() - started
        if (performance.now() - started > 1000) return Infinity
        await sleep(5)
      }
    }
    await cli('disable', orders.client_id)
    const disabledAfter = await seenWithin(401, false)
    t.ok(disabledAfter <= 1000, `refused on both ${Math.round(disabledAfter)} ms after the command returned`)
    await cli('enable', orders.client_id)
    t.ok(await seenWithin(204, true) <= 1000, 'taken again once enabled')
  })

  t.test('a user disabled through the admin API on one replica is refused on the other within a second: check, detail, introspection, refresh', async (t) => {
    const cli = async (...args: string[]) => JSON.parse((await runCli(['clients', 'create', ...args, '--json'], { ...database, SECRET_KEY })).stdout) as { client_id: string, client_secret: string }
    const ops = await cli('--name', 'ops', '--scope', 'admin:users:write', '--audience', 'http://localhost/api/admin')
    const gateway = await cli('--name', 'gateway', '--scope', 'introspect', '--scope', 'introspect:users', '--audience', 'https://gateway.example.test')
    const basicOf = (c: { client_id: string, client_secret: string }) => `Basic ${Buffer.from(`${c.client_id}:${c.client_secret}`).toString('base64')}`
    const form = (base: string, path: string, body: string, authorization: string) =>
      fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization }, body })
    const { access_token: opsToken } = await (await form(a, '/oauth/token', 'grant_type=client_credentials', basicOf(ops))).json() as { access_token: string }
    const someone = uniqueUser()
    const registered = await (await post(a, '/api/auth/register', someone)).json() as { user: { id: number } }
    const { access, refresh } = await (await post(b, '/api/auth/login', { identifier: someone.username, password: someone.password })).json() as { access: string, refresh: string }
    const bearer = { authorization: `Bearer ${access}` }
    // B has the session in its cache.
    for (let i = 0; i < 2; i++) t.equal((await fetch(`${b}/api/auth/check`, { headers: bearer })).status, 204)
    const disabled = await post(a, `/api/admin/users/${registered.user.id}/disable`, { reason: 'replica test' }, { authorization: `Bearer ${opsToken}` })
    t.equal(disabled.status, 200)
    const started = performance.now()
    while ((await fetch(`${b}/api/auth/check`, { headers: bearer })).status !== 401) {
      if (performance.now() - started > 1000) break
      await sleep(5)
    }
    const after = performance.now() - started
    t.ok(after <= 1000, `check refused on B ${Math.round(after)} ms after the disable answered`)
    t.equal((await fetch(`${b}/api/detail`, { headers: bearer })).status, 401)
    t.same(await (await form(b, '/api/token/introspect', `token=${access}`, basicOf(gateway))).json(), { active: false })
    t.equal((await post(b, '/api/token/refresh', { refresh })).status, 401)
  })

  t.test('both stop cleanly on SIGTERM', async (t) => {
    t.same(await Promise.all(replicas.map((replica) => replica.stop())), [0, 0])
  })
})
