import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { durationToSeconds } from '../src/lib/duration.ts'
import { build, freshDatabase } from './helper.ts'

t.test('durations are seconds or a number with s, m, h or d', async (t) => {
  t.equal(durationToSeconds('300'), 300)
  t.equal(durationToSeconds('45s'), 45)
  t.equal(durationToSeconds('15m'), 900)
  t.equal(durationToSeconds('2h'), 7200)
  t.equal(durationToSeconds('7d'), 604800)
})

t.test('a bad value stops the start with a message naming the variable', async (t) => {
  const cases: Array<[Record<string, string | undefined>, RegExp]> = [
    [{ PORT: 'abc' }, /PORT/],
    [{ PORT: '70000' }, /PORT/],
    [{ JWT_ACCESS_TOKEN_LIFETIME: '5 minutes' }, /JWT_ACCESS_TOKEN_LIFETIME/],
    [{ JWT_REFRESH_TOKEN_LIFETIME: '-1d' }, /JWT_REFRESH_TOKEN_LIFETIME/],
    [{ JWT_ACCESS_TOKEN_LIFETIME: '0' }, /JWT_ACCESS_TOKEN_LIFETIME must be between 1s and 3650d/],
    [{ AUTH_SESSION_MAX_LIFETIME: '3651d' }, /AUTH_SESSION_MAX_LIFETIME must be between 1s and 3650d/],
    [{ AUTH_SESSION_MAX_LIFETIME: '99999999999d' }, /AUTH_SESSION_MAX_LIFETIME/],
    [{ BCRYPT_COST: '3' }, /BCRYPT_COST/],
    [{ DB_ENGINE: 'mysql' }, /DB_ENGINE/],
    [{ JWT_ALGORITHM: 'none' }, /JWT_ALGORITHM/],
    [{ COOKIE_SAMESITE: 'sometimes' }, /COOKIE_SAMESITE/],
    [{ COOKIE_SECURE: 'maybe' }, /COOKIE_SECURE/],
    [{ COOKIE_SAMESITE: 'none', COOKIE_SECURE: 'false' }, /COOKIE_SAMESITE=none requires COOKIE_SECURE/],
    [{ DB_ENGINE: 'postgres', DATABASE_URL: '' }, /DATABASE_URL/],
    [{ DB_ENGINE: 'postgres', DATABASE_URL: undefined }, /DATABASE_URL is required when DB_ENGINE=postgres/]
  ]
  for (const [env, message] of cases) {
    await t.rejects(build(t, { env, database: { DB_ENGINE: 'pglite', DB_NAME: 'memory://' } }), message, JSON.stringify(env))
  }
})

t.test('in production a missing or short SECRET_KEY stops the start', async (t) => {
  const database = { DB_ENGINE: 'pglite', DB_NAME: 'memory://' }
  await t.rejects(build(t, { database, env: { NODE_ENV: 'production', SECRET_KEY: undefined } }), /SECRET_KEY is required when NODE_ENV=production/)
  await t.rejects(build(t, { database, env: { NODE_ENV: 'production', SECRET_KEY: '' } }), /SECRET_KEY/)
  await t.rejects(build(t, { database, env: { NODE_ENV: 'production', SECRET_KEY: 'short-secret' } }), /at least 32 characters/)
})

t.test('in development a missing SECRET_KEY is generated once into the data folder', {
  skip: process.env.DB_ENGINE === 'postgres' && 'the data folder is PGlite\'s'
}, async (t) => {
  const database = await freshDatabase(t)
  const logLines: string[] = []
  const first = await build(t, { database, logLines, env: { NODE_ENV: 'development', SECRET_KEY: undefined } })
  t.equal(first.config.SECRET_KEY.length >= 32, true)
  t.ok(logLines.map((l) => JSON.parse(l)).some((e) => e.level === 40 && e.msg === 'SECRET_KEY is not set: generated one into the data folder (development only)'), 'with a warning')
  await first.close()
  const file = join(database.DB_NAME!, 'secret_key')
  t.equal((await stat(file)).mode & 0o777, 0o600, 'readable by the owner only')
  const secret = (await readFile(file, 'utf8')).trim()
  t.equal(secret, first.config.SECRET_KEY)
  const second = await build(t, { database, env: { NODE_ENV: 'development', SECRET_KEY: undefined } })
  t.equal(second.config.SECRET_KEY, secret, 'the same secret on the next start: keys still open')
})
