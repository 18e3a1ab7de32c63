import { createHook, AsyncLocalStorage } from 'node:async_hooks'
import { spawnSync } from 'node:child_process'
import bcrypt from 'bcrypt'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { runCli } from '../src/cli.ts'
import { importableHash, isDjangoHash, MAX_BCRYPT_COST, MAX_PBKDF2_ITERATIONS, MIN_PBKDF2_ITERATIONS, verifyDjangoPassword } from '../src/lib/django-hashers.ts'
import { createDjangoImport } from '../src/services/accounts/django-import.ts'
import { build, freshDatabase, postJson, register, SECRET_KEY, uniqueUser } from './helper.ts'

// Made by Django itself: see fixtures/django/make-fixtures.py.
const FIXTURES = join(import.meta.dirname, 'fixtures', 'django')
const DUMP = join(FIXTURES, 'users.json')

interface DumpedUser {
  model: string
  pk: number
  fields: { username: string, email: string, password: string, is_active: boolean, is_superuser: boolean, is_staff: boolean, first_name: string, last_name: string, last_login: string | null, date_joined: string }
}
const dump = JSON.parse(await readFile(DUMP, 'utf8')) as DumpedUser[]
const passwords = JSON.parse(await readFile(join(FIXTURES, 'passwords.json'), 'utf8')) as Record<string, string>
const dumped = (username: string): DumpedUser => dump.find((entry) => entry.fields.username === username)!

const IMPORTED = ['alice', 'émile', 'retired', 'bea']
// In the order of the dump (by id); `taken` only where authgate already has taken@example.com.
const REFUSED = {
  nopassword: /^unusable password/,
  argon: /^argon2 hashes are not supported \(authgate verifies pbkdf2_sha256 and bcrypt_sha256\)$/,
  'john@home': /^username not valid for authgate after NFKC/,
  noemail: /^empty email/
}
const HIGHEST_ID = Math.max(...dump.map((entry) => entry.pk))

// The thread-pool jobs of node:crypto's pbkdf2 and of bcrypt's native binding, by async_hooks type.
const HASHING_JOB = /^(PBKDF2REQUEST|bcrypt:\w+AsyncWorker)$/
const jobsOfCall = new AsyncLocalStorage<string[]>()
createHook({ init (_id, type) { if (HASHING_JOB.test(type)) jobsOfCall.getStore()?.push(type) } }).enable()

/**
 * The hashing jobs `check` starts, seen as each is made (each is asked for in the check's first
 * synchronous stretch) and in its own async context only, so no other work of the process
 * counts; and its answer, for the caller to wait for or not.
 */
async function hashingOf (check: () => Promise<boolean>): Promise<{ jobs: string[], answer: Promise<boolean> }> {
  const jobs: string[] = []
  const answer = jobsOfCall.run(jobs, check)
  await new Promise((resolve) => setImmediate(resolve))
  return { jobs, answer }
}

t.test('importing a dumpdata file keeps ids and hashes, skips what authgate refuses, and moves the sequence', async (t) => {
  const app = await build(t)
  const holder = await register(app, { ...uniqueUser(), email: 'taken@example.com' })
  const users = () => app.db.selectFrom('users').select(['id', 'username', 'email', 'password_hash', 'is_active']).orderBy('id').execute()

  const report = await createDjangoImport({ db: app.db }).run(DUMP)
  t.match(report, { imported: IMPORTED.length, unchanged: 0 })
  t.same(report.skipped.map(({ id, username }) => ({ id, username })), [...Object.keys(REFUSED), 'taken'].map((username) => ({ id: dumped(username).pk, username })))
  t.match(report.skipped.map(({ why }) => why), [...Object.values(REFUSED), `email taken by the authgate user of id ${holder.id}`])

  const rows = await users()
  t.same(rows.filter((row) => row.id !== holder.id), IMPORTED.map((username) => {
    const { pk, fields } = dumped(username)
    return { id: pk, username, email: fields.email, password_hash: fields.password, is_active: fields.is_active }
  }), 'ids, usernames, emails, hashes and active flags kept')
  t.equal(rows.find((row) => row.username === 'retired')?.is_active, false)

  const later = await register(app)
  t.ok(later.id > HIGHEST_ID, `a user registered afterwards gets an id (${later.id}) above the imported ones`)

  t.test('a second run changes nothing, and never overwrites what authgate changed since', async (t) => {
    // As the login's rehash to bcrypt would.
    await app.db.updateTable('users').set({ password_hash: await bcrypt.hash(passwords.alice!, 4) }).where('username', '=', 'alice').execute()
    const before = await users()
    const again = await createDjangoImport({ db: app.db }).run(DUMP)
    t.match(again, { imported: 0, unchanged: IMPORTED.length })
    t.same(again.skipped, report.skipped)
    t.same(await users(), before)
    t.ok((await register(app)).id > later.id, 'the sequence did not move back')
  })
})

t.test('users holding an id, username or email of an authgate user, and malformed entries, are reported and never written', async (t) => {
  const app = await build(t)
  const holder = await register(app)
  const { fields } = dumped('alice')
  const entry = (pk: number | undefined, username: string, email: string) => ({ model: 'auth.user', pk, fields: { ...fields, username, email } })
  const file = join(t.testdir(), 'conflicts.json')
  await writeFile(file, JSON.stringify([
    entry(holder.id, 'someone', 'someone@example.com'),
    entry(201, holder.username.toUpperCase(), 'other@example.com'),
    entry(202, holder.username, holder.email),
    entry(undefined, 'natural', 'natural@example.com'),
    { model: 'auth.user', pk: 203, fields: { ...fields, username: 'broken', email: null } },
    { model: 'auth.group', pk: 1, fields: { name: 'staff', permissions: [] } },
    entry(204, 'ｆｕｌｌｗｉｄｔｈ', 'fullwidth@example.com')
  ]))
  const before = await app.db.selectFrom('users').selectAll().execute()

  const report = await createDjangoImport({ db: app.db }).run(file)
  t.match(report, { imported: 1, unchanged: 0 })
  t.same(report.skipped, [
    { id: null, username: 'natural', why: 'no pk (dumped with --natural-primary): dump again without it' },
    { id: 203, username: 'broken', why: 'malformed dumpdata entry' },
    { id: holder.id, username: 'someone', why: `id taken by the authgate user ${JSON.stringify(holder.username)} <${holder.email}>` },
    { id: 201, username: holder.username.toUpperCase(), why: `username taken by the authgate user of id ${holder.id}` },
    { id: 202, username: holder.username, why: `username and email taken by the authgate user of id ${holder.id}` }
  ], 'malformed entries first, then in the order of the file; other models are not users')
  const after = await app.db.selectFrom('users').selectAll().execute()
  t.same(after.filter((row) => row.id !== 204), before, 'the authgate user untouched')
  t.equal(after.find((row) => row.id === 204)?.username, 'fullwidth', 'usernames stored NFKC-normalised, as authgate looks them up')
})

t.test('npm run import:django: the usage, a missing file, and the summary of a dump', async (t) => {
  const env = { ...await freshDatabase(t), SECRET_KEY }
  for (const args of [[], ['--from'], ['--form', DUMP], ['--from', DUMP, 'extra']]) {
    t.match(await runCli(['import:django', ...args], env), { code: 1, stderr: /^authgate: usage: npm run import:django -- --from </ }, args.join(' '))
  }
  t.match(await runCli(['import:django', '--from', join(FIXTURES, 'missing.json')], env), { code: 1, stderr: /^authgate: cannot read .*missing\.json: ENOENT/ })

  t.match(await runCli(['migrate'], env), { code: 0 })
  const { code, stdout } = await runCli(['import:django', '--from', DUMP], env)
  t.equal(code, 0)
  const lines = stdout.split('\n')
  t.match(lines, [...Object.entries(REFUSED).map(([username, why]) => new RegExp(`^skipped ${dumped(username).pk} ${JSON.stringify(username)}: ${why.source.slice(1)}`)), /^imported 5, unchanged 0, skipped 4$/])
  t.equal(lines.length, 5)
  t.match(await runCli(['import:django', '--from', DUMP], env), { code: 0, stdout: /\nimported 0, unchanged 5, skipped 4$/ })
})

// Django's auth_user as its migrations leave it on PostgreSQL (django.contrib.auth 0001 to 0012).
const AUTH_USER_DDL = `create table auth_user (
  id serial primary key,
  password varchar(128) not null,
  last_login timestamptz null,
  is_superuser boolean not null,
  username varchar(150) not null unique,
  first_name varchar(150) not null,
  last_name varchar(150) not null,
  email varchar(254) not null,
  is_staff boolean not null,
  is_active boolean not null,
  date_joined timestamptz not null
)`

t.test('imports from the auth_user table of a Django database with --from postgres://', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'needs DB_ENGINE=postgres: the Django database is another PostgreSQL database, which embedded PGlite cannot serve'
}, async (t) => {
  const database = await freshDatabase(t)
  const env = { ...database, SECRET_KEY }
  const djangoUrl = (await freshDatabase(t)).DATABASE_URL!
  const django = new pg.Client({ connectionString: djangoUrl })
  await django.connect()
  t.teardown(() => django.end())
  await django.query(AUTH_USER_DDL)
  for (const { pk, fields: f } of dump) {
    await django.query(
      'insert into auth_user (id, password, last_login, is_superuser, username, first_name, last_name, email, is_staff, is_active, date_joined) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)',
      [pk, f.password, f.last_login, f.is_superuser, f.username, f.first_name, f.last_name, f.email, f.is_staff, f.is_active, f.date_joined])
  }

  t.match(await runCli(['migrate'], env), { code: 0 })
  const first = await runCli(['import:django', '--from', djangoUrl], env)
  t.match(first, { code: 0, stdout: /\nimported 5, unchanged 0, skipped 4$/ })
  t.match(first.stdout, /^skipped 105 "nopassword": unusable password/)
  t.match(await runCli(['import:django', '--from', djangoUrl], env), { code: 0, stdout: /\nimported 0, unchanged 5, skipped 4$/ })

  const authgate = new pg.Client({ connectionString: database.DATABASE_URL })
  await authgate.connect()
  t.teardown(() => authgate.end())
  const { rows } = await authgate.query('select id, username, password_hash from users order by id')
  t.same(rows, ['alice', 'émile', 'retired', 'taken', 'bea'].map((username) => ({ id: dumped(username).pk, username, password_hash: dumped(username).fields.password })))
  const { rows: [next] } = await authgate.query("select nextval(pg_get_serial_sequence('users', 'id'))::int as id")
  t.equal(next.id, HIGHEST_ID + 1, 'the next id is past the highest imported one')
})

t.test('verifyDjangoPassword', async (t) => {
  const alice = dumped('alice').fields.password
  const bea = dumped('bea').fields.password
  const emile = dumped('émile').fields.password

  t.test('accepts the right password and refuses a wrong one, for each supported hasher', async (t) => {
    t.match(alice, /^pbkdf2_sha256\$/)
    t.match(bea, /^bcrypt_sha256\$\$2b\$/)
    for (const [username, hash] of [['alice', alice], ['bea', bea]] as const) {
      t.equal(await verifyDjangoPassword(passwords[username]!, hash), true, username)
      t.equal(await verifyDjangoPassword(`${passwords[username]!}!`, hash), false, `${username}, wrong password`)
      t.equal(await verifyDjangoPassword('', hash), false, `${username}, empty password`)
    }
  })

  t.test('hashes the UTF-8 of a non-ASCII password, unnormalised as Django does', async (t) => {
    const password = passwords['émile']!
    t.equal(await verifyDjangoPassword(password, emile), true)
    t.equal(await verifyDjangoPassword(password.normalize('NFD'), emile), false, 'the decomposed form is another password')
  })

  t.test('refuses malformed hashes without throwing', async (t) => {
    const [, iterations, salt, hash] = alice.split('$')
    const malformed = [
      '', '!', 'pbkdf2_sha256$', `pbkdf2_sha256$${iterations}$${salt}`, `pbkdf2_sha256$x$${salt}$${hash}`,
      `pbkdf2_sha256$${iterations}$$${hash}`, `pbkdf2_sha256$${iterations}$${salt}$${hash!.slice(1)}`,
      `pbkdf2_sha256$${iterations}$${salt}$${hash!.replace(/=$/, '!')}`, `pbkdf2_sha256$0$${salt}$${hash}`,
      `pbkdf2_sha256$-1$${salt}$${hash}`, `${alice} `, 'bcrypt_sha256$', bea.replace('$$', '$'), bea.slice(0, -1),
      bea.replace('$2b$', '$2x$'), bea.replace('$2b$12$', '$2b$03$'), 'pbkdf2_sha1$260000$salt$aGFzaA==', 'md5$salt$hash'
    ]
    for (const encoded of malformed) {
      t.equal(await verifyDjangoPassword(passwords.alice!, encoded), false, JSON.stringify(encoded))
      t.match(importableHash(encoded), { ok: false, why: String }, JSON.stringify(encoded))
    }
  })

  t.test('refuses at once a work factor above the bound, so a stored hash cannot stall the service', async (t) => {
    const [, , salt, hash] = alice.split('$')
    const tooMany = `pbkdf2_sha256$${MAX_PBKDF2_ITERATIONS + 1}$${salt}$${hash}`
    const tooCostly = bea.replace('$2b$12$', `$2b$${MAX_BCRYPT_COST + 1}$`)
    const mostCostly = bea.replace('$2b$12$', '$2b$31$')
    // Counted, not timed: the hashing jobs each check starts. A hash within the bounds starts
    // one, so a job is seen when there is one.
    for (const [username, stored, job] of [['alice', alice, 'PBKDF2REQUEST'], ['bea', bea, 'bcrypt:CompareAsyncWorker']] as const) {
      const { jobs, answer } = await hashingOf(() => verifyDjangoPassword(passwords[username]!, stored))
      t.same(jobs, [job], `${username}: one hashing job seen`)
      t.equal(await answer, true)
    }
    for (const encoded of [tooMany, tooCostly, mostCostly]) {
      const { jobs, answer } = await hashingOf(() => verifyDjangoPassword(passwords.alice!, encoded))
      // A job that should not have run is not waited out: bcrypt of cost 31 runs for days.
      if (t.same(jobs, [], 'refused without hashing')) t.equal(await answer, false)
    }
    t.same(importableHash(tooMany), { ok: false, why: `pbkdf2_sha256 hash of ${MAX_PBKDF2_ITERATIONS + 1} iterations, outside authgate's bounds (${MIN_PBKDF2_ITERATIONS} to ${MAX_PBKDF2_ITERATIONS}: Django never wrote fewer)` })
    t.same(importableHash(tooCostly), { ok: false, why: `bcrypt_sha256 hash of cost ${MAX_BCRYPT_COST + 1}, outside authgate's bounds (4 to ${MAX_BCRYPT_COST})` })
    t.same(importableHash(mostCostly), { ok: false, why: `bcrypt_sha256 hash of cost 31, outside authgate's bounds (4 to ${MAX_BCRYPT_COST})` })
  })

  t.test('refuses hashes of fewer iterations than Django ever wrote, and verifies none against them', async (t) => {
    const { pbkdf2Sync } = await import('node:crypto')
    for (const iterations of [1, 1000, MIN_PBKDF2_ITERATIONS - 1]) {
      const weak = `pbkdf2_sha256$${iterations}$somesalt$${pbkdf2Sync(passwords.alice!, 'somesalt', iterations, 32, 'sha256').toString('base64')}`
      t.same(importableHash(weak), { ok: false, why: `pbkdf2_sha256 hash of ${iterations} iterations, outside authgate's bounds (${MIN_PBKDF2_ITERATIONS} to ${MAX_PBKDF2_ITERATIONS}: Django never wrote fewer)` })
      t.equal(await verifyDjangoPassword(passwords.alice!, weak), false, `${iterations}: the right password does not pass`)
    }
    const least = `pbkdf2_sha256$${MIN_PBKDF2_ITERATIONS}$somesalt$${pbkdf2Sync(passwords.alice!, 'somesalt', MIN_PBKDF2_ITERATIONS, 32, 'sha256').toString('base64')}`
    t.equal(await verifyDjangoPassword(passwords.alice!, least), true, 'Django 1.4\'s 10,000 still verify')
  })

  t.test('isDjangoHash and importableHash tell Django\'s supported hashes from the rest', async (t) => {
    const own = await bcrypt.hash(passwords.alice!, 4)
    t.equal(isDjangoHash(alice), true)
    t.equal(isDjangoHash(bea), true)
    t.equal(isDjangoHash(own), false, 'authgate\'s own bcrypt hashes')
    t.equal(await verifyDjangoPassword(passwords.alice!, own), false)
    t.equal(isDjangoHash(dumped('argon').fields.password), false)
    t.equal(isDjangoHash(dumped('nopassword').fields.password), false)
    t.same(importableHash(alice), { ok: true })
    t.same(importableHash(bea), { ok: true })
    t.match(importableHash(own), { ok: false, why: /^not a Django password hash/ })
  })
})

t.test('an imported Django user signs in with the old password, and the hash becomes bcrypt then', async (t) => {
  const app = await build(t)
  await createDjangoImport({ db: app.db }).run(DUMP)
  const hashOf = async (username: string): Promise<string> =>
    (await app.db.selectFrom('users').select('password_hash').where('username', '=', username).executeTakeFirstOrThrow()).password_hash!
  for (const username of ['alice', 'émile', 'bea']) {
    t.ok(isDjangoHash(await hashOf(username)), `${username}: a Django hash before`)
    const wrong = await postJson(app, '/api/auth/login', { identifier: username, password: 'not the password at all' })
    t.equal(wrong.statusCode, 401, `${username}: a wrong password is refused`)
    t.ok(isDjangoHash(await hashOf(username)), `${username}: and changes nothing`)
    const res = await postJson(app, '/api/auth/login', { identifier: dumped(username).fields.email, password: passwords[username] })
    t.equal(res.statusCode, 200, `${username}: the old password signs in`)
    t.match(await hashOf(username), /^\$2b\$04\$/, `${username}: bcrypt at the configured cost now`)
    t.equal((await postJson(app, '/api/auth/login', { identifier: username, password: passwords[username] })).statusCode, 200, `${username}: and signs in again`)
  }
  const inactive = await postJson(app, '/api/auth/login', { identifier: 'retired', password: passwords.retired })
  t.equal(inactive.statusCode, 401, 'an inactive Django user stays out')
})

t.test('an imported user whose password is longer than bcrypt takes signs in, and keeps the Django hash', async (t) => {
  const app = await build(t)
  const { pbkdf2Sync } = await import('node:crypto')
  // Django takes passwords of any length; bcrypt reads 72 bytes, so authgate keeps such a hash as it is.
  const password = 'a Django passphrase of well over seventy-two bytes, which Django itself allows'
  t.ok(Buffer.byteLength(password) > 72)
  const hash = `pbkdf2_sha256$260000$longsalt$${pbkdf2Sync(password, 'longsalt', 260000, 32, 'sha256').toString('base64')}`
  const user = uniqueUser('long')
  await app.db.insertInto('users').values({ username: user.username, email: user.email, password_hash: hash }).execute()
  const res = await postJson(app, '/api/auth/login', { identifier: user.username, password })
  t.equal(res.statusCode, 200, 'the whole password signs in')
  const stored = await app.db.selectFrom('users').select('password_hash').where('username', '=', user.username).executeTakeFirstOrThrow()
  t.equal(stored.password_hash, hash, 'not rehashed to a bcrypt that would match its first 72 bytes only')
  t.equal((await postJson(app, '/api/auth/login', { identifier: user.username, password: password.slice(0, 72) })).statusCode, 401, 'its first 72 bytes do not')
})

// Debian's python3-django, installed by .ci/run: hashes Django makes at this moment, not only the stored fixtures.
const djangoAvailable = spawnSync('/usr/bin/python3', ['-c', 'import django']).status === 0
t.test('hashes Django makes now verify, and a wrong password does not', { skip: !djangoAvailable && 'no Django for /usr/bin/python3' }, async (t) => {
  const script = [
    'import json, sys',
    'from django.conf import settings',
    "settings.configure(PASSWORD_HASHERS=['django.contrib.auth.hashers.PBKDF2PasswordHasher'])",
    'from django.contrib.auth.hashers import make_password',
    'print(json.dumps(make_password(sys.argv[1])))'
  ].join('\n')
  for (const password of ['correct horse battery staple', 'ünïcödé 日本語 password']) {
    const made = spawnSync('/usr/bin/python3', ['-c', script, password], { encoding: 'utf8', timeout: 300_000 })
    t.equal(made.status, 0, made.stderr)
    const hash = JSON.parse(made.stdout) as string
    t.match(hash, /^pbkdf2_sha256\$\d+\$/)
    t.equal(await verifyDjangoPassword(password, hash), true, JSON.stringify(password))
    t.equal(await verifyDjangoPassword(`${password}x`, hash), false)
  }
})
