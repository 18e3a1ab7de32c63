import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { generateSync } from 'otplib'
import { randomBytes, randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { createConnection, createServer, type Socket } from 'node:net'
import pg from 'pg'
import t, { type Test } from 'tap'
import { createServices } from '../src/services/index.ts'
import { silentLogger } from '../src/lib/logger.ts'
import { basic, bearer, build, login, postJson, TestClock } from './helper.ts'

// CVE-2018-1058: a role that may only create objects in a schema of authgate's search path
// plants overloads that match authgate's calls better than pg_catalog's, each copying the
// password hashes and the encrypted signing keys into a table of its own when run.
const PLANTED = [
  ['to_timestamp(text)', 'timestamptz', 'pg_catalog.to_timestamp(cast($1 as double precision))'],
  ['to_timestamp(bigint)', 'timestamptz', 'pg_catalog.to_timestamp(cast($1 as double precision))'],
  ['make_interval(secs text)', 'interval', 'cast($1 || \' seconds\' as interval)'],
  ['make_interval(secs bigint)', 'interval', 'cast($1 || \' seconds\' as interval)'],
  ['pg_advisory_xact_lock(integer)', 'void', 'null'],
  ['pg_try_advisory_xact_lock(integer)', 'boolean', 'true'],
  ['pg_notify(varchar, varchar)', 'void', 'null'],
  ['floor(double precision)', 'double precision', 'pg_catalog.floor($1)'],
  // The polymorphic and variadic functions of the clients' lookup: an exact type beats "any".
  ['json_agg(json)', 'json', 'null'],
  ['json_build_object(text, text, text, bigint)', 'json', 'null'],
  ['json_build_object(text, text, text, numeric)', 'json', 'null'],
  ['array_append(text[], text)', 'text[]', '$1']
] as const

// Issue 26: an operator planted for the types authgate's statements use, for each pair of them:
// one that pg_catalog has for exactly these types loses to it; any other call that needs a cast
// to reach pg_catalog's (numeric * integer, timestamptz - integer, text || integer…) runs it.
const TYPES = ['numeric', 'integer', 'bigint', 'double precision', 'timestamptz', 'interval', 'text', 'jsonb', 'uuid'] as const
const OPERATORS = ['*', '+', '-', '=', '<', '>', '<=', '>=', '<>', '||'] as const
const COMPARISONS: ReadonlySet<string> = new Set(['=', '<', '>', '<=', '>=', '<>'])

/** SQL that makes `public.<op>(left, right)` run a function copying the secrets into public.loot. */
function plantedOperators (): string {
  const statements: string[] = []
  TYPES.forEach((left, i) => TYPES.forEach((right, j) => OPERATORS.forEach((op, k) => {
    const fn = `public.evil_op_${i}_${j}_${k}`
    const returns = COMPARISONS.has(op) ? 'boolean' : left
    statements.push(`create function ${fn}(${left}, ${right}) returns ${returns} language plpgsql as $$ begin
      insert into public.loot select 'operator ${op}(${left}, ${right})', (select string_agg(password_hash, ',') from public.users), (select string_agg(private_key_enc, ',') from public.signing_keys);
      return ${COMPARISONS.has(op) ? 'null' : '$1'}; end $$;
      create operator public.${op} (leftarg = ${left}, rightarg = ${right}, function = ${fn});`)
  })))
  return statements.join('\n')
}

/**
 * Every SQL text sent to PostgreSQL through this proxy, read off the wire (the frontend messages
 * Query and Parse): whatever the driver, pool or listener sent it, nothing of the service's is
 * missed, and nothing needs a hook in it. A Kysely log would miss pg's own and the listener's.
 */
async function capturingProxy (t: Test, target: URL): Promise<{ url: (base: string) => string, statements: Set<string> }> {
  const statements = new Set<string>()
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = createConnection({ host: target.hostname, port: Number(target.port || 5432) })
    sockets.add(client).add(upstream)
    let buffer = Buffer.alloc(0)
    let started = false
    client.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk])
      for (;;) {
        // The startup message (and an SSLRequest before it) has no type byte.
        if (!started) {
          if (buffer.length < 8) break
          const length = buffer.readInt32BE(0)
          if (buffer.length < length) break
          started = buffer.readInt32BE(4) !== 80877103
          buffer = buffer.subarray(length)
          continue
        }
        if (buffer.length < 5) break
        const length = buffer.readInt32BE(1)
        if (buffer.length < length + 1) break
        const type = String.fromCharCode(buffer[0]!)
        const body = buffer.subarray(5, length + 1)
        if (type === 'Q') statements.add(body.subarray(0, body.indexOf(0)).toString('utf8'))
        if (type === 'P') {
          const nameEnd = body.indexOf(0)
          statements.add(body.subarray(nameEnd + 1, body.indexOf(0, nameEnd + 1)).toString('utf8'))
        }
        buffer = buffer.subarray(length + 1)
      }
    })
    client.pipe(upstream)
    upstream.pipe(client)
    const end = (): void => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream) }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    server.close()
    await once(server, 'close')
  })
  const { port } = server.address() as { port: number }
  return {
    statements,
    url: (base) => {
      const url = new URL(base)
      url.host = `127.0.0.1:${port}`
      return url.toString()
    }
  }
}

t.test('authgate beside a role that may create in its schema', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'database roles are PostgreSQL\'s: checked in the PostgreSQL run'
}, async (t) => {
  const base = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
  const suffix = randomBytes(4).toString('hex')
  const [owner, attacker, name] = [`authgate_owner_${suffix}`, `authgate_attacker_${suffix}`, `authgate_roles_${suffix}`]
  const as = (role: string | undefined): string => {
    const url = new URL(base)
    url.pathname = `/${name}`
    if (role !== undefined) url.username = role
    return url.toString()
  }
  const query = async (url: string, text: string): Promise<pg.QueryResult> => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      return await client.query(text)
    } finally {
      await client.end()
    }
  }
  // authgate runs as a role that owns its database and is no superuser, as docs/operations.md says.
  await query(base, `create role ${owner} login; create role ${attacker} login`)
  t.teardown(() => query(base, `drop role if exists ${owner}; drop role if exists ${attacker}`))
  await query(base, `create database ${name} owner ${owner}`)
  t.teardown(() => query(base, `drop database if exists ${name} with (force)`))
  // What PostgreSQL before 15 gave every role, and what many databases still have.
  await query(as(undefined), `grant create on schema public to ${attacker}`)

  const plant = PLANTED.map(([signature, returns, result]) => `create function public.${signature} returns ${returns} language plpgsql as $$ begin
      insert into public.loot select '${signature}', (select string_agg(password_hash, ',') from public.users), (select string_agg(private_key_enc, ',') from public.signing_keys);
      ${returns === 'void' ? 'return' : `return ${result}`}; end $$;`).join('\n')
  await query(as(attacker), `create table public.loot (planted text, hashes text, keys text);
    grant insert on public.loot to public;
    ${plant}
    ${plantedOperators()}`)

  // The service reaches PostgreSQL through a proxy that reads every statement it sends.
  const wire = await capturingProxy(t, new URL(base))
  const logLines: string[] = []
  const clock = new TestClock()
  const introspector = { id: 'gateway', secret: randomBytes(24).toString('base64url') }
  const app = await build(t, {
    database: { DB_ENGINE: 'postgres', DATABASE_URL: wire.url(as(owner)) },
    logLines,
    clock,
    env: {
      INTROSPECTION_CLIENTS: `${introspector.id}:${introspector.secret}`,
      EMAIL_SIGN_IN: 'true',
      EMAIL_VERIFICATION: 'optional',
      APP_VERIFY_URL: 'http://127.0.0.1:9/verify',
      APP_RESET_URL: 'http://127.0.0.1:9/reset'
    }
  })
  const form = (url: string, fields: Record<string, string>, headers: Record<string, string> = {}) =>
    app.inject({ method: 'POST', url, payload: new URLSearchParams(fields).toString(), headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers } })

  t.test('the start warns that another role may create in the search path, and says what to revoke', async (t) => {
    const warning = logLines.map((line) => JSON.parse(line)).find((line) => line.schema === 'public')
    t.match(warning, { level: 40, roles: [attacker], msg: `roles other than authgate's own may create objects in the schema public of its search path: REVOKE CREATE ON SCHEMA public FROM ${attacker}` })
  })

  t.test('sign-in, refresh, replay, reuse, sign-out, pruning and a key rotation run none of the planted functions', async (t) => {
    const { access, refresh } = await login(app)
    const next = await postJson(app, '/api/token/refresh', { refresh })
    t.equal(next.statusCode, 200)
    t.equal((await postJson(app, '/api/token/refresh', { refresh })).statusCode, 200, 'a replay within the grace')
    clock.advance(60)
    t.equal((await postJson(app, '/api/token/refresh', { refresh })).statusCode, 401, 'reuse after the grace revokes')
    const second = await login(app)
    t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${second.access}` } })).statusCode, 200)
    t.equal((await postJson(app, '/api/auth/logout', {}, { authorization: `Bearer ${second.access}` })).statusCode, 204)
    t.equal((await postJson(app, '/api/token/verify', { token: access })).statusCode, 401)
    // What the CLI and the pruner run.
    const services = await createServices({ config: app.config, db: app.db, clock, log: silentLogger, background: false })
    await services.cleanup.flush()
    await services.cleanup.prune()
    await services.signingKeys.rotate()
    await services.close()
    t.same((await query(as(undefined), 'select planted from public.loot')).rows, [], 'nothing was copied')
  })

  t.test('service clients: secrets (one rotated, in its grace), an assertion, introspection, forward auth, revocation run none of them either', async (t) => {
    const orders = 'https://orders.example.test'
    const secretClient = await app.clients.create({ name: 'orders', scopes: ['orders:read', 'introspect', 'introspect:users'], audiences: [orders] })
    // A secret in its grace has an expires_at: the lookup's epoch arithmetic runs on it.
    const { secret } = await app.clients.rotateSecret(secretClient.client.id, 3600)
    const token = await form('/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(secretClient.client.id, secretClient.secret) })
    t.equal(token.statusCode, 200, token.body)
    t.equal((await form('/oauth/token', { grant_type: 'client_credentials', client_id: secretClient.client.id, client_secret: secret })).statusCode, 200)
    t.equal((await form('/oauth/token', { grant_type: 'client_credentials' }, { authorization: basic(randomBytes(16).toString('hex'), 'wrong') })).statusCode, 401, 'an unknown client')
    const { publicKey, privateKey } = await generateKeyPair('ES256')
    const { client: signer } = await app.clients.create({ name: 'signer', scopes: ['orders:read'], audiences: [orders], jwks: { keys: [{ ...await exportJWK(publicKey), kid: 'k1' }] } })
    const now = Math.floor(clock.now().getTime() / 1000)
    const assertion = await new SignJWT({ jti: randomUUID() }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(signer.id).setSubject(signer.id)
      .setAudience(`${app.config.JWT_ISSUER}/oauth/token`).setIssuedAt(now).setExpirationTime(now + 3600).sign(privateKey)
    const grant = { grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion }
    t.equal((await form('/oauth/token', grant)).statusCode, 200)
    t.equal((await form('/oauth/token', grant)).statusCode, 401, 'replayed')
    const access = token.json().access_token as string
    t.match((await form('/api/token/introspect', { token: access }, { authorization: basic(secretClient.client.id, secret) })).json(), { active: true })
    const user = await login(app)
    t.match((await form('/api/token/introspect', { token: user.access }, { authorization: basic(introspector.id, introspector.secret) })).json(), { active: true })
    t.equal((await app.inject({ url: `/api/auth/check?audience=${encodeURIComponent(orders)}`, headers: { authorization: `Bearer ${access}` } })).statusCode, 204)
    t.equal((await form('/oauth/revoke', { token: user.refresh })).statusCode, 200)
    await app.clients.disable(signer.id)
    clock.advance(7200)
    const services = await createServices({ config: app.config, db: app.db, clock, log: silentLogger, background: false })
    t.match(await services.cleanup.flush(), { assertions: 1 }, 'the spent assertion pruned once expired')
    await services.close()
    t.same((await query(as(undefined), 'select planted from public.loot')).rows, [], 'nothing was copied')
  })

  t.test('second factors, mailed codes and the first proof of an address run none of them either', async (t) => {
    const totp = (secret: string): string => generateSync({ secret, epoch: Math.floor(clock.now().getTime() / 1000) })
    // The first proof of an address, by a code: what it removes is removed by these statements.
    const { access, user } = await login(app)
    // Its registration's verification mail first: made later, it would cancel the codes issued here.
    await app.outbox.work()
    const added = (await postJson(app, '/api/auth/mfa/totp', {}, bearer(access))).json()
    const enrolled = (await postJson(app, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: totp(added.secret) }, bearer(access))).json()
    t.equal(enrolled.recovery_codes.length, 10)
    t.equal((await postJson(app, '/api/auth/mfa/verify', { method: 'totp', code: totp(added.secret) }, bearer(enrolled.access))).statusCode, 400, 'a code used already')
    t.equal((await postJson(app, '/api/auth/mfa/verify', { method: 'totp', code: totp(added.secret) === '000000' ? '111111' : '000000' }, bearer(enrolled.access))).statusCode, 400, 'a wrong one, counted')
    const first = (await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })).json()
    t.equal((await postJson(app, '/api/auth/mfa/verify', { mfa_token: first.mfa_token, method: 'recovery_code', code: enrolled.recovery_codes[0] })).statusCode, 200)
    clock.advance(30)
    t.equal((await postJson(app, '/api/auth/mfa/verify', { method: 'totp', code: totp(added.secret) }, bearer(enrolled.access))).statusCode, 200, 'a step-up')
    for (const purpose of ['email_sign_in', 'password_reset', 'email_verification'] as const) {
      await app.oneTimeCodes.issue({ purpose, userId: user.id, ttlS: 600, with: { code: true }, detail: { email: user.email } })
    }
    const issued = await app.oneTimeCodes.issue({ purpose: 'email_sign_in', userId: user.id, ttlS: 600, with: { code: true } })
    t.equal((await postJson(app, '/api/auth/email/sign-in/verify', { email: user.email, code: issued.code === '000000' ? '111111' : '000000' })).statusCode, 400)
    t.equal((await postJson(app, '/api/auth/email/sign-in/verify', { email: user.email, code: issued.code })).statusCode, 200, 'the first proof: password, sessions and the factor removed')
    const reset = await app.oneTimeCodes.issue({ purpose: 'password_reset', userId: user.id, ttlS: 600, with: { token: true, code: true } })
    t.equal((await postJson(app, '/api/auth/password/reset', { email: 'nobody@example.test', code: '123456', new_password: 'a new passphrase here' })).statusCode, 400, 'an address of no account')
    t.equal((await postJson(app, '/api/auth/password/reset', { token: reset.token, new_password: 'a new passphrase here' })).statusCode, 204)
    const other = await login(app)
    // Its registration's verification mail first: made later, it would cancel the one issued here.
    await app.outbox.work()
    const verification = await app.oneTimeCodes.issue({ purpose: 'email_verification', userId: other.user.id, ttlS: 600, with: { token: true }, detail: { email: other.user.email } })
    t.same((await postJson(app, '/api/auth/email/verify', { token: verification.token, password: other.user.password })).json(), { email_verified: true })
    t.equal((await postJson(app, '/api/auth/password/forgot', { email: other.user.email })).statusCode, 202)
    await app.outbox.work()
    clock.advance(7200)
    const services = await createServices({ config: app.config, db: app.db, clock, log: silentLogger, background: false })
    t.ok((await services.cleanup.flush()).oneTimeCodes > 0, 'spent and expired secrets pruned')
    await services.close()
    t.same((await query(as(undefined), 'select planted from public.loot')).rows, [], 'nothing was copied')
  })

  // The planted objects above are the ones thought of; this asks PostgreSQL what each statement
  // the service sent resolves to, with them all in place. Each is prepared again as authgate's
  // role, with its search path, and its query tree (debug_print_rewritten) read for every
  // function, operator and aggregate it names: each must be pg_catalog's, an extension's, or
  // authgate's own (its pinned functions). This proves that with these plants no statement of
  // these flows resolves to another role's object; it does not prove that a plant of a type
  // pair not planted here could not win a call that needs an implicit cast.
  t.test('every statement the service sent resolves only to pg_catalog\'s, an extension\'s or its own functions and operators', async (t) => {
    const checker = new pg.Client({ connectionString: as(owner) })
    await checker.connect()
    t.teardown(() => checker.end())
    let tree = ''
    checker.on('notice', (notice) => { if (/rewritten parse tree/.test(notice.message ?? '')) tree += notice.detail ?? '' })
    await checker.query('set debug_print_rewritten = on; set debug_pretty_print = off; set client_min_messages = log')
    const ours = await checker.query<{ oid: number }>(`
      select p.oid from pg_proc p where p.pronamespace = 'pg_catalog'::regnamespace or p.proowner = current_user::regrole
        or exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
      union all
      select o.oid from pg_operator o where o.oprnamespace = 'pg_catalog'::regnamespace or o.oprowner = current_user::regrole
        or exists (select 1 from pg_depend d where d.classid = 'pg_operator'::regclass and d.objid = o.oid and d.deptype = 'e')`)
    const trusted = new Set(ours.rows.map((row) => Number(row.oid)))
    const dml = [...wire.statements].filter((text) => /^\s*(select|insert|update|delete|with)\b/i.test(text))
    t.ok(dml.length > 40, `${dml.length} distinct statements were sent (of ${wire.statements.size})`)
    t.ok(dml.some((text) => /oauth_client_secrets/.test(text)), 'the clients\' lookup among them')
    const foreign: string[] = []
    for (const [i, text] of dml.entries()) {
      tree = ''
      await checker.query(`prepare checked_${i} as ${text}`)
      await checker.query(`deallocate checked_${i}`)
      t.ok(tree.length > 0, `a query tree for statement ${i}`)
      const oids = [...tree.matchAll(/:(?:funcid|opno|opfuncid|aggfnoid|winfnoid|eqop|sortop|hashfuncid|negfuncid) (\d+)/g)].map((m) => Number(m[1]))
      for (const oid of oids.filter((oid) => oid !== 0 && !trusted.has(oid))) {
        const { rows } = await checker.query(`select (select cast(cast(p.oid as regprocedure) as text) from pg_proc p where p.oid = $1)
          as fn, (select cast(cast(o.oid as regoperator) as text) from pg_operator o where o.oid = $1) as op`, [oid])
        foreign.push(`${rows[0]?.fn ?? rows[0]?.op ?? oid}: ${text}`)
      }
    }
    t.same(foreign, [], 'no statement resolves to a function or operator of another role')
  })
})
