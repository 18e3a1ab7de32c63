import pg from 'pg'
import t, { type Test } from 'tap'
import { runCli } from '../src/cli.ts'
import { claimsOf, eventually, freshDatabase, SECRET_KEY, serverEnv, unheard, uniqueUser } from './helper.ts'
import { startServer } from './server-process.ts'

// Two processes of `node src/server.ts` on one PostgreSQL and one Redis: how replicas run
// behind a gateway. PGlite serves one process only.
t.test('two replicas on one PostgreSQL and one Redis', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'replicas share a PostgreSQL: checked in the PostgreSQL run'
}, async (t) => {
  const database = await freshDatabase(t)
  // The limits on: the per-account one is tried below. The others far up: every request below
  // comes from 127.0.0.1, and a test that waits for a change asks again and again.
  const env = serverEnv(database, {
    NODE_ENV: 'production',
    REDIS_URL: 'redis://127.0.0.1:6379',
    RATE_LIMIT_ENABLED: 'true',
    RATE_LIMIT_IDENTIFIER_MAX: '3',
    RATE_LIMIT_CREDENTIALS_MAX: '100000',
    RATE_LIMIT_TOKEN_MAX: '100000',
    RATE_LIMIT_CLIENT_MAX: '100000'
  })
  // Started together on an empty database: both migrate and make the first key at once.
  const replicas = [startServer(env), startServer(env)]
  t.teardown(() => { for (const replica of replicas) replica.child.kill('SIGKILL') })
  const [a, b] = await Promise.all(replicas.map((replica) => replica.listening)) as [string, string]
  const post = (base: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
  const statusOf = async (base: string, path: string, access: string) => (await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${access}` } })).status
  /** A new user, registered on A, signed in on `base`. */
  const someone = async (base: string) => {
    const user = uniqueUser()
    const { user: { id } } = await (await post(a, '/api/auth/register', user)).json() as { user: { id: number } }
    return { id, ...await (await post(base, '/api/auth/login', { identifier: user.username, password: user.password })).json() as { access: string, refresh: string } }
  }

  /**
   * Proves that the replicas honoured a change because they were told of it (LISTEN/NOTIFY),
   * which a test on a loaded machine cannot tell by the clock from the two other ways they learn
   * (an entry of a cache older than 5 s, a second without a heartbeat). So each round they keep a
   * witness first and the subject next; the witness is then changed with no notification
   * (unheard), and the subject's change is made. Once the subject's change shows, the witness
   * still answered as before proves the cache was in use and its entries fresh: only the
   * notification explains the subject. A round whose witness aged out too (the machine took
   * longer than the TTL) proves nothing, and another is played, five at most.
   */
  async function toldOf (t: Test, play: () => Promise<{ shows: () => Promise<boolean>, witnessKept: () => Promise<boolean> }>): Promise<void> {
    for (let round = 1; round <= 5; round++) {
      const { shows, witnessKept } = await play()
      if (!t.ok(await eventually(shows, { everyMs: 50 }), `round ${round}: the change shows`)) return
      if (await witnessKept()) {
        t.pass(`round ${round}: the witness changed unheard of was still answered from the cache: the notification told of the change`)
        return
      }
      t.comment(`round ${round} proves nothing: the witness was not answered from the cache either (older than its TTL by then, or the channel lapsed)`)
    }
    t.fail('in five rounds the witness never outlived the change: no notification told of it')
  }

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
  // How soon is the machine's: what is proven is that the notification refused it.
  t.test('a logout on one replica is refused on the other, told by the notification', async (t) => {
    let subject = { access: '' }
    await toldOf(t, async () => {
      const witness = await someone(a)
      subject = await someone(b)
      for (const { access } of [witness, subject]) t.equal(await statusOf(b, '/api/detail', access), 200, 'kept by B')
      await unheard(database.DATABASE_URL!, 'sessions', 'update sessions set revoked_at = now() where id = $1', [claimsOf(witness.access).sid])
      const bearer = { authorization: `Bearer ${subject.access}` }
      t.equal((await post(a, '/api/auth/logout', {}, bearer)).status, 204)
      t.equal(await statusOf(a, '/api/detail', subject.access), 401, 'at once on the replica that ended it')
      return {
        shows: async () => await statusOf(b, '/api/detail', subject.access) === 401,
        witnessKept: async () => await statusOf(b, '/api/detail', witness.access) === 200
      }
    })
    t.equal(await statusOf(b, '/api/auth/check', subject.access), 401)
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

  t.test('a client disabled by the CLI is refused at introspection and check on both replicas, told by the notification; enabled, taken again', async (t) => {
    const cli = async (...args: string[]) => {
      const result = await runCli(['clients', ...args], { ...database, SECRET_KEY })
      if (result.code !== 0) throw new Error(result.stderr)
      return result.stdout
    }
    const ORDERS = 'https://orders.example.test'
    // Introspection answers a client for the tokens addressed to it: this gateway sees all (issue 26).
    const gateway = JSON.parse(await cli('create', '--name', 'gateway', '--scope', 'introspect', '--scope', 'introspect:all', '--audience', 'https://gateway.example.test', '--json')) as { client_id: string, client_secret: string }
    const basicOf = (c: { client_id: string, client_secret: string }) => `Basic ${Buffer.from(`${c.client_id}:${c.client_secret}`).toString('base64')}`
    const form = (base: string, path: string, body: string, authorization: string) =>
      fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization }, body })
    /** A client of the orders service, and a token of it (taken while it may take one). */
    const ordersClient = async () => {
      const client = JSON.parse(await cli('create', '--name', 'orders', '--scope', 'orders:read', '--audience', ORDERS, '--json')) as { client_id: string, client_secret: string }
      const { access_token: token } = await (await form(a, '/oauth/token', 'grant_type=client_credentials', basicOf(client))).json() as { access_token: string }
      return { id: client.client_id, token }
    }
    const check = async (base: string, token: string) => (await fetch(`${base}/api/auth/check?audience=${encodeURIComponent(ORDERS)}&scope=orders:read`, { headers: { authorization: `Bearer ${token}` } })).status
    const active = async (base: string, token: string) => ((await (await form(base, '/api/token/introspect', `token=${token}`, basicOf(gateway))).json()) as { active: boolean }).active
    /** Whether both replicas take `token` (check 204, introspection active), or both refuse it. */
    const onBoth = async (token: string, taken: boolean) => (await Promise.all([a, b].flatMap((base) => [
      check(base, token).then((status) => status === (taken ? 204 : 401)),
      active(base, token).then((isActive) => isActive === taken)
    ]))).every(Boolean)
    const setDisabled = (id: string, disabled: boolean) =>
      unheard(database.DATABASE_URL!, 'oauth_clients', `update oauth_clients set disabled_at = ${disabled ? 'now()' : 'null'} where id = $1`, [id])

    let subject = { id: '', token: '' }
    await toldOf(t, async () => {
      const witness = await ordersClient()
      subject = await ordersClient()
      // Both replicas read each client once, and keep it: the witness first.
      for (const { token } of [witness, subject]) t.ok(await onBoth(token, true), 'taken on both')
      await setDisabled(witness.id, true)
      await cli('disable', subject.id)
      return { shows: () => onBoth(subject.token, false), witnessKept: () => onBoth(witness.token, true) }
    })

    await toldOf(t, async () => {
      // The witness this time a client both keep as disabled, enabled unheard of.
      const witness = await ordersClient()
      await cli('disable', witness.id)
      subject = await ordersClient()
      await cli('disable', subject.id)
      for (const { token } of [witness, subject]) t.ok(await eventually(() => onBoth(token, false), { everyMs: 50 }), 'refused on both')
      await setDisabled(witness.id, false)
      await cli('enable', subject.id)
      return { shows: () => onBoth(subject.token, true), witnessKept: () => onBoth(witness.token, false) }
    })
  })

  t.test('a user disabled through the admin API on one replica is refused on the other, told by the notification: check, detail, introspection, refresh', async (t) => {
    const cli = async (...args: string[]) => JSON.parse((await runCli(['clients', 'create', ...args, '--json'], { ...database, SECRET_KEY })).stdout) as { client_id: string, client_secret: string }
    const ops = await cli('--name', 'ops', '--scope', 'admin:users:write', '--audience', 'http://localhost/api/admin')
    const gateway = await cli('--name', 'gateway', '--scope', 'introspect', '--scope', 'introspect:users', '--audience', 'https://gateway.example.test')
    const basicOf = (c: { client_id: string, client_secret: string }) => `Basic ${Buffer.from(`${c.client_id}:${c.client_secret}`).toString('base64')}`
    const form = (base: string, path: string, body: string, authorization: string) =>
      fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization }, body })
    const { access_token: opsToken } = await (await form(a, '/oauth/token', 'grant_type=client_credentials', basicOf(ops))).json() as { access_token: string }

    let subject = { id: 0, access: '', refresh: '' }
    await toldOf(t, async () => {
      const witness = await someone(b)
      subject = await someone(b)
      // B keeps each session: the witness's first.
      for (const { access } of [witness, subject]) t.equal(await statusOf(b, '/api/auth/check', access), 204)
      await unheard(database.DATABASE_URL!, 'users', 'update users set is_active = false where id = $1', [witness.id])
      const disabled = await post(a, `/api/admin/users/${subject.id}/disable`, { reason: 'replica test' }, { authorization: `Bearer ${opsToken}` })
      t.equal(disabled.status, 200)
      return {
        shows: async () => await statusOf(b, '/api/auth/check', subject.access) === 401,
        witnessKept: async () => await statusOf(b, '/api/auth/check', witness.access) === 204
      }
    })
    t.equal(await statusOf(b, '/api/detail', subject.access), 401)
    t.same(await (await form(b, '/api/token/introspect', `token=${subject.access}`, basicOf(gateway))).json(), { active: false })
    t.equal((await post(b, '/api/token/refresh', { refresh: subject.refresh })).status, 401)
  })

  t.test('both stop cleanly on SIGTERM', async (t) => {
    t.same(await Promise.all(replicas.map((replica) => replica.stop())), [0, 0])
  })
})
