import { createPublicKey, randomUUID } from 'node:crypto'
import { createSigner, createVerifier } from 'fast-jwt'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { LOCK_KEYS } from '../src/db/locks.ts'
import { SecretBox } from '../src/lib/secret-box.ts'
import { createKeyring } from '../src/services/keys/keyring.ts'
import { ensureSigningKey, loadSigningKeys, rotateSigningKey, type SigningKey } from '../src/services/keys/signing-keys.ts'
import type { TokenClaims } from '../src/services/auth/claims.ts'
import { SessionCache } from '../src/services/sessions/cache.ts'
import { build, claimsOf, eventually, freshDatabase, login, SECRET_KEY, TestClock } from './helper.ts'
import { proxyDatabase } from './tcp-proxy.ts'

t.test('JWKS and signing keys', async (t) => {
  const app = await build(t)

  t.test('the JWKS publishes the public ES256 key, cacheable, with and without the slash', async (t) => {
    for (const url of ['/.well-known/jwks.json', '/.well-known/jwks.json/']) {
      const res = await app.inject({ url })
      t.equal(res.statusCode, 200)
      t.equal(res.headers['cache-control'], 'public, max-age=300')
      const { keys } = res.json()
      t.equal(keys.length, 1)
      t.same(Object.keys(keys[0]).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y'], 'public parts only: no d')
      t.match(keys[0], { kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig', kid: String })
    }
  })

  t.test('another service verifies an access token with nothing but the JWKS', async (t) => {
    const { access, user } = await login(app)
    const { keys } = (await app.inject({ url: '/.well-known/jwks.json' })).json()
    const header = JSON.parse(Buffer.from(access.split('.')[0]!, 'base64url').toString())
    const jwk = keys.find((k: { kid: string }) => k.kid === header.kid)
    const pem = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()
    const claims = createVerifier({ key: pem, algorithms: ['ES256'], allowedIss: app.config.JWT_ISSUER, allowedAud: 'authgate' })(access)
    t.match(claims, { user_id: user.id, token_type: 'access' })
  })

  t.test('a JWKS verifier that forgets token_type still cannot take a refresh token', async (t) => {
    const { refresh } = await login(app)
    const { keys } = (await app.inject({ url: '/.well-known/jwks.json' })).json()
    const header = JSON.parse(Buffer.from(refresh.split('.')[0]!, 'base64url').toString())
    t.notOk(keys.some((k: { kid: string }) => k.kid === header.kid), 'its kid is in no JWKS')
    for (const jwk of keys) {
      const pem = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()
      t.throws(() => createVerifier({ key: pem, allowedIss: app.config.JWT_ISSUER, allowedAud: 'authgate' })(refresh), 'no published key verifies it')
    }
  })

  t.test('the private key is stored encrypted', async (t) => {
    const rows = await app.db.selectFrom('signing_keys').selectAll().execute()
    t.equal(rows.length, 1)
    t.match(rows[0]!.private_key_enc, /^v1\./)
    t.notMatch(rows[0]!.private_key_enc, /PRIVATE KEY/)
    t.notMatch(JSON.stringify(rows[0]!.public_jwk), /"d"/)
  })

  t.test('replicas creating the first key at once create one', async (t) => {
    await app.db.deleteFrom('signing_keys').execute()
    const box = new SecretBox(SECRET_KEY, 'signing-keys')
    const kids = await Promise.all(Array.from({ length: 5 }, () => ensureSigningKey(app.db, box, 'ES256')))
    t.equal(new Set(kids).size, 1)
    t.equal((await app.db.selectFrom('signing_keys').select('kid').execute()).length, 1)
  })
})

t.test('two instances starting together on one database make one key', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'PGlite is one process\'s database: only PostgreSQL has replicas'
}, async (t) => {
  const database = await freshDatabase(t)
  const [a, b] = await Promise.all([build(t, { database }), build(t, { database })])
  t.same(a.keyring.jwks, b.keyring.jwks)
  t.equal(a.keyring.jwks.keys.length, 1)
  const token = await login(a)
  t.equal((await b.inject({ url: '/api/detail', headers: { authorization: `Bearer ${token.access}` } })).statusCode, 200, 'one replica verifies what the other signed')
})

t.test('a key created by another replica after start is found by its kid, one lookup per 10 s', async (t) => {
  const clock = new TestClock()
  // The reload timer (a minute) an hour away: what this replica comes to know, a lookup or the
  // notification told it. Its session cache is used once LISTEN holds (a heartbeat arrived).
  const sessionCache = new SessionCache()
  const app = await build(t, { clock, overrides: { keysReloadIntervalS: 3600, sessionCache } })
  const { access } = await login(app)
  const claims = JSON.parse(Buffer.from(access.split('.')[1]!, 'base64url').toString())
  const box = new SecretBox(SECRET_KEY, 'signing-keys')
  // Another replica rotates: this one has not loaded the new key yet.
  async function rotateElsewhere (): Promise<string> {
    await rotateSigningKey(app.db, box, 'ES256')
    const [newest] = await loadSigningKeys(app.db, box, 86400)
    return createSigner({ key: newest!.privateKey, algorithm: 'ES256', kid: newest!.kid, header: { alg: 'ES256', typ: 'at+jwt' } })(claims)
  }
  const detail = async (token: string): Promise<number> =>
    (await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${token}` } })).statusCode

  t.equal(await detail(await rotateElsewhere()), 200, 'a new kid: looked up at once')
  t.equal(await detail(access), 200, 'the retired key still verifies')
  t.equal(app.keyring.jwks.keys.length, 2, 'both keys in the JWKS')

  if (process.env.DB_ENGINE === 'postgres') t.ok(await eventually(() => sessionCache.live), 'it listens')
  const second = await rotateElsewhere()
  if (process.env.DB_ENGINE === 'postgres') {
    // On PostgreSQL every replica hears of a key change at once (NOTIFY), no lookup needed: the
    // last lookup was less than 10 s ago on the test's clock, so only the notification explains it.
    const kid = JSON.parse(Buffer.from(second.split('.')[0]!, 'base64url').toString()).kid
    t.ok(await eventually(() => app.keyring.jwks.keys.some((key) => key.kid === kid)), 'another new kid: heard of through the notification')
    t.equal(await detail(second), 200, 'and taken')
    return
  }
  t.equal(await detail(second), 401, 'another new kid within 10 s of the last lookup: refused without a query')
  clock.advance(10)
  t.equal(await detail(second), 200, 'after 10 s it is looked up')
})

for (const [alg, kty] of [['EdDSA', 'OKP'], ['RS256', 'RSA']] as const) {
  t.test(`JWT_ALGORITHM=${alg} signs, verifies and publishes ${kty} keys`, async (t) => {
    const app = await build(t, { env: { JWT_ALGORITHM: alg } })
    const { access } = await login(app)
    t.equal(JSON.parse(Buffer.from(access.split('.')[0]!, 'base64url').toString()).alg, alg)
    t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode, 200)
    t.match(app.keyring.jwks.keys, [{ kty, alg }])
  })
}

t.test('JWT_ALGORITHM=HS256 works and publishes no key', async (t) => {
  const app = await build(t, { env: { JWT_ALGORITHM: 'HS256' } })
  const { access } = await login(app)
  t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode, 200)
  t.same((await app.inject({ url: '/.well-known/jwks.json' })).json(), { keys: [] })
})

t.test('changing JWT_ALGORITHM retires the old key, whose tokens keep working', async (t) => {
  const database = await freshDatabase(t)
  const first = await build(t, { database })
  const { access } = await login(first)
  await first.close()
  const second = await build(t, { database, env: { JWT_ALGORITHM: 'EdDSA' } })
  t.equal((await second.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode, 200)
  const { access: fresh } = await login(second)
  t.equal(JSON.parse(Buffer.from(fresh.split('.')[0]!, 'base64url').toString()).alg, 'EdDSA')
  t.same(second.keyring.jwks.keys.map((k: { alg: string }) => k.alg).sort(), ['ES256', 'EdDSA'])
})

t.test('a different SECRET_KEY cannot open the stored keys: the start fails and says why', async (t) => {
  const database = await freshDatabase(t)
  const first = await build(t, { database })
  await first.close()
  await t.rejects(build(t, { database, env: { SECRET_KEY: 'another-secret-key-of-sufficient-length-x' } }), /SECRET_KEY is not the one/)
})

t.test('keys:rotate: --next publishes a key before it signs, a rotate promotes it, the old key verifies until its tokens expire', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const box = new SecretBox(SECRET_KEY, 'signing-keys')
  const kidOf = (token: string): string => JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()).kid
  const jwksKids = async (): Promise<string[]> => (await app.inject({ url: '/.well-known/jwks.json' })).json().keys.map((k: { kid: string }) => k.kid)
  const detail = async (token: string): Promise<number> => (await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${token}` } })).statusCode
  const first = await login(app)
  const oldKid = kidOf(first.access)

  const { kid: nextKid } = await rotateSigningKey(app.db, box, 'ES256', { next: true })
  t.same(await rotateSigningKey(app.db, box, 'ES256', { next: true }), { kid: nextKid, promoted: false }, 'twice: the same key')
  // Replicas pick it up on their next reload (each minute).
  await app.keyring.reload()
  t.same((await jwksKids()).sort(), [oldKid, nextKid].sort(), 'both keys in the JWKS')
  t.equal(kidOf((await login(app)).access), oldKid, 'the old key still signs')

  t.same(await rotateSigningKey(app.db, box, 'ES256'), { kid: nextKid, promoted: true })
  await app.keyring.reload()
  t.equal(kidOf((await login(app)).access), nextKid, 'the published key signs now')
  t.equal(await detail(first.access), 200, 'a token of the old key still verifies')
  t.same((await jwksKids()).sort(), [oldKid, nextKid].sort(), 'and the old key stays in the JWKS')

  // Once every access token the old key signed has expired (5 minutes), it leaves the JWKS.
  clock.advance(600)
  await app.keyring.reload()
  t.same(await jwksKids(), [nextKid])
  t.equal(await detail((await login(app)).access), 200)
  t.match(await rotateSigningKey(app.db, box, 'ES256'), { promoted: false }, 'without a published key: a new one')
})

t.test('a replica that has not heard of a rotation still signs with the retired key: its tokens verify until they expire', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock, env: { JWT_ACCESS_TOKEN_LIFETIME: '30s' } })
  const box = new SecretBox(SECRET_KEY, 'signing-keys')
  const { access } = await login(app)
  // Another replica, its keys as they were before the rotation, until its next reload (a minute).
  const before = await loadSigningKeys(app.db, box, 0, clock.now())
  const stale = createKeyring({ issuer: app.config.JWT_ISSUER, audience: app.config.JWT_AUDIENCE, clientId: app.config.OAUTH_FIRST_PARTY_CLIENT_ID, secret: SECRET_KEY, load: async () => before, clock })
  await stale.reload()
  const { kid } = await rotateSigningKey(app.db, box, 'ES256', { now: clock.now() })
  await app.keyring.reload()

  clock.advance(55)
  const iat = Math.floor(clock.now().getTime() / 1000)
  const { iss: _iss, aud: _aud, ...claims } = claimsOf(access) as TokenClaims
  const late = stale.sign({ ...claims, jti: randomUUID(), iat, exp: iat + 30 })
  t.not(JSON.parse(Buffer.from(late.split('.')[0]!, 'base64url').toString()).kid, kid, 'signed with the retired key')
  // 80 s after the retirement, 5 s before the token expires: more than its lifetime, less than lifetime + reload + skew.
  clock.advance(25)
  await app.keyring.reload()
  t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${late}` } })).statusCode, 200, 'it verifies')
  const kids = (await app.inject({ url: '/.well-known/jwks.json' })).json().keys.map((k: { kid: string }) => k.kid)
  t.ok(kids.includes(before[0]!.kid), 'and its key is still in the JWKS')
})

t.test('two reloads at once apply in the order they read: an older reading never overwrites a newer one', async (t) => {
  const app = await build(t)
  const box = new SecretBox(SECRET_KEY, 'signing-keys')
  const before = await loadSigningKeys(app.db, box, 0)
  const { kid } = await rotateSigningKey(app.db, box, 'ES256')
  const after = await loadSigningKeys(app.db, box, 0)
  // The first reading answers late, the second at once, as two queries on two connections may.
  let answerFirst!: (keys: SigningKey[]) => void
  const readings = [new Promise<SigningKey[]>((resolve) => { answerFirst = resolve }), Promise.resolve(after)]
  let reads = 0
  const keyring = createKeyring({ issuer: app.config.JWT_ISSUER, audience: app.config.JWT_AUDIENCE, clientId: app.config.OAUTH_FIRST_PARTY_CLIENT_ID, secret: SECRET_KEY, load: async () => await readings[reads++]!, clock: new TestClock() })
  const reloads = [keyring.reload(), keyring.reload()]
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(reads, 1, 'the second reads only once the first is applied')
  answerFirst(before)
  await Promise.all(reloads)
  t.equal(reads, 2)
  t.ok(keyring.jwks.keys.some((key) => key.kid === kid), 'the newer reading stands')
})

t.test('a rotation reaches every replica at once: none signs with the retired key', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'replicas share PostgreSQL: checked in the PostgreSQL run'
}, async (t) => {
  const database = await freshDatabase(t)
  const a = await build(t, { database })
  const kidOf = (token: string): string => JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()).kid
  const box = new SecretBox(SECRET_KEY, 'signing-keys')

  t.test('B listening: told by the notification', async (t) => {
    // B's reload timer (a minute) an hour away: only the notification can tell it of the rotation.
    // Its session cache is used once a heartbeat arrived, which only a LISTEN in place can hear.
    const sessionCache = new SessionCache()
    const b = await build(t, { database, overrides: { keysReloadIntervalS: 3600, sessionCache } })
    t.ok(await eventually(() => sessionCache.live), 'B listens')
    const { kid } = await rotateSigningKey(a.db, box, 'ES256')
    t.ok(await eventually(async () => kidOf((await login(b)).access) === kid), 'B signs with the new key')
  })

  t.test('B not listening yet: it reads the keys once its LISTEN holds', async (t) => {
    // B's listener connects through a proxy that holds it: the rotation's notification is sent
    // before B listens, and never reaches it. CI saw this window open by itself once, on a loaded
    // machine: a replica's start reads the keys, and its LISTEN lands a little later.
    const { proxy, url } = await proxyDatabase(t, database.DATABASE_URL!)
    proxy.pause()
    const sessionCache = new SessionCache()
    const b = await build(t, { database: { ...database, DATABASE_LISTEN_URL: url }, overrides: { keysReloadIntervalS: 3600, sessionCache } })
    const { kid } = await rotateSigningKey(a.db, box, 'ES256')
    t.not(kidOf((await login(b)).access), kid, 'before its LISTEN, B signs with the key it read at its start')
    proxy.resume()
    t.ok(await eventually(() => sessionCache.live), 'B listens')
    t.ok(await eventually(async () => kidOf((await login(b)).access) === kid), 'B signs with the new key')
  })
})

t.test('a first start whose LISTEN takes hold before its key is made warns of nothing', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'LISTEN is PostgreSQL\'s: checked in the PostgreSQL run'
}, async (t) => {
  const database = await freshDatabase(t)
  // The lock of the signing keys, held here: the start's first key waits for it, its LISTEN does not.
  const holder = new pg.Client({ connectionString: database.DATABASE_URL })
  await holder.connect()
  t.teardown(() => holder.end())
  await holder.query('begin')
  await holder.query(`select pg_advisory_xact_lock(${LOCK_KEYS.signingKeys})`)
  const logLines: string[] = []
  // Its session cache is used once a heartbeat arrived, which only a LISTEN in place can hear.
  const sessionCache = new SessionCache()
  const starting = build(t, { database, logLines, overrides: { sessionCache } })
  t.ok(await eventually(() => sessionCache.live), 'the replica listens, its first key not made yet')
  // Time for a reading of the keys, had the LISTEN asked for one: it would find none, and warn.
  await sleep(500)
  await holder.query('commit')
  const app = await starting
  t.same(logLines.map((line) => JSON.parse(line)).filter((line) => line.level >= 40).map((line) => line.msg), [], 'no warning')
  t.equal(app.keyring.jwks.keys.length, 1, 'and it signs with its first key')
})

t.test('npm run keys:rotate says what it did', async (t) => {
  const { runCli } = await import('../src/cli.ts')
  // Its own database: on PGlite the command and a running service cannot share a data folder.
  const env = { ...await freshDatabase(t), SECRET_KEY }
  t.match(await runCli(['migrate'], env), { code: 0 })
  t.match(await runCli(['keys:rotate'], env), { code: 0, stdout: /^signing with [0-9a-f-]{36} \(ES256\); the previous keys verify until their tokens expire$/ })
  const published = await runCli(['keys:rotate', '--next'], env)
  t.match(published, { code: 0, stdout: /^published [0-9a-f-]{36} \(ES256\) in the JWKS; it signs after the next keys:rotate$/ })
  const kid = /published (\S+)/.exec(published.stdout)![1]!
  t.match(await runCli(['keys:rotate'], env), { code: 0, stdout: `signing with ${kid} (ES256), the key published before; the previous keys verify until their tokens expire` })
  t.match(await runCli(['keys:rotate', '--now'], env), { code: 1, stderr: /usage: npm run keys:rotate \[-- --next\]/ })

  // Each rotation is in the audit trail.
  const { createDb } = await import('../src/db/index.ts')
  const { loadConfig } = await import('../src/config.ts')
  const db = createDb(await loadConfig(env))
  t.teardown(() => db.destroy())
  const events = await db.selectFrom('audit_events').select(['event', 'detail']).orderBy('id').execute()
  t.match(events, [
    { event: 'key_rotated', detail: { next: false, promoted: false } },
    { event: 'key_rotated', detail: { kid, next: true } },
    { event: 'key_rotated', detail: { kid, next: false, promoted: true } }
  ])
})

t.test('JWT_PRIVATE_KEY: an operator\'s PEM signs instead of the database\'s keys, and the JWKS publishes its public half', async (t) => {
  const { generateKeyPairSync } = await import('node:crypto')
  const { mkdtemp, rm, writeFile } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const { runCli } = await import('../src/cli.ts')
  const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const folder = await mkdtemp(join(tmpdir(), 'authgate-pem-'))
  t.teardown(() => rm(folder, { recursive: true, force: true }))
  const file = join(folder, 'signing.pem')
  await writeFile(file, pem, { mode: 0o600 })

  for (const [why, env] of [['the PEM itself', { JWT_PRIVATE_KEY: pem }], ['a file holding it', { JWT_PRIVATE_KEY_FILE: file }]] as const) {
    const app = await build(t, { env })
    const { keys } = (await app.inject({ url: '/.well-known/jwks.json' })).json()
    t.equal(keys.length, 1, why)
    t.same(Object.keys(keys[0]).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y'], `${why}: the public half only`)
    // RFC 7638: the same key has the same kid on every replica.
    t.match(keys[0].kid, /^[A-Za-z0-9_-]{43}$/)
    const { access } = await login(app)
    t.equal(JSON.parse(Buffer.from(access.split('.')[0]!, 'base64url').toString()).kid, keys[0].kid, `${why}: it signs`)
    const verified = createVerifier({ key: createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString(), algorithms: ['ES256'] })(access)
    t.match(verified, { token_type: 'access' }, `${why}: verifiable with the operator's public key`)
    t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode, 200)
    t.equal((await app.db.selectFrom('signing_keys').select('kid').execute()).length, 0, `${why}: no database key made`)
    const rotate = await runCli(['keys:rotate'], { DB_ENGINE: 'pglite', DB_NAME: 'memory://', SECRET_KEY, ...env })
    t.match(rotate, { code: 1, stderr: /the signing key comes from JWT_PRIVATE_KEY: rotate it there/ })
  }
})
