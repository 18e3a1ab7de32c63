import { randomBytes } from 'node:crypto'
import pg from 'pg'
import t from 'tap'
import { createServices } from '../src/services/index.ts'
import { silentLogger } from '../src/lib/logger.ts'
import { build, login, postJson, TestClock } from './helper.ts'

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
  ['evil_times(numeric, integer)', 'numeric', '$1 * cast($2 as numeric)'],
  ['evil_minus(timestamptz, integer)', 'timestamptz', '$1']
] as const

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

  const plant = PLANTED.map(([signature, returns, result]) => {
    const fn = signature.replace(/^evil_/, 'public.evil_').replace(/^(?!public\.)/, 'public.')
    return `create function ${fn} returns ${returns} language plpgsql as $$ begin
      insert into public.loot select '${signature}', (select string_agg(password_hash, ',') from public.users), (select string_agg(private_key_enc, ',') from public.signing_keys);
      ${returns === 'void' ? 'return' : `return ${result}`}; end $$;`
  }).join('\n')
  await query(as(attacker), `create table public.loot (planted text, hashes text, keys text);
    grant insert on public.loot to public;
    ${plant}
    create operator public.* (leftarg = numeric, rightarg = integer, function = public.evil_times);
    create operator public.- (leftarg = timestamptz, rightarg = integer, function = public.evil_minus);`)

  const logLines: string[] = []
  const clock = new TestClock()
  const app = await build(t, { database: { DB_ENGINE: 'postgres', DATABASE_URL: as(owner) }, logLines, clock })

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
})
