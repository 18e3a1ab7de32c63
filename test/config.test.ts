import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ConfigError, durationToSeconds, loadConfig, parseConfig } from '../src/config.ts'

// Configuration is a pure function of the environment: these tests start no app.

const pemOf = (type: 'ed25519' | 'ec', namedCurve?: string): string =>
  generateKeyPairSync(type as 'ec', { namedCurve: namedCurve ?? 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
const ED25519_PEM = pemOf('ed25519')
const P384_PEM = pemOf('ec', 'P-384')

t.test('durations are seconds or a number with s, m, h or d, derived once as seconds', async (t) => {
  t.equal(durationToSeconds('300'), 300)
  t.equal(durationToSeconds('45s'), 45)
  t.equal(durationToSeconds('15m'), 900)
  t.equal(durationToSeconds('2h'), 7200)
  t.equal(durationToSeconds('7d'), 604800)
  const config = parseConfig({ JWT_ACCESS_TOKEN_LIFETIME: '15m', JWT_REFRESH_TOKEN_LIFETIME: '7d' })
  t.match(config, { accessTtlS: 900, refreshTtlS: 604800, sessionMaxS: 30 * 86400 })
})

t.test('the defaults', async (t) => {
  const config = parseConfig({})
  t.match(config, {
    NODE_ENV: 'development',
    DB_ENGINE: 'pglite',
    DB_NAME: './data',
    PORT: 3000,
    HOST: '127.0.0.1',
    JWT_ALGORITHM: 'ES256',
    BCRYPT_COST: 12,
    COOKIE_SECURE: true,
    COOKIE_SAMESITE: 'lax',
    logLevel: 'info',
    trustProxy: false,
    cookieNames: { access: '__Host-access_token', refresh: '__Secure-refresh_token', binding: '__Host-refresh_binding' }
  })
  t.ok(Object.isFrozen(config), 'decorated unchanged: nothing may alter it later')
  t.equal(parseConfig({ DEBUG: 'true' }).logLevel, 'debug')
  t.equal(parseConfig({ DEBUG: 'true', LOG_LEVEL: 'warn' }).logLevel, 'warn')
})

t.test('cookie names follow Secure and COOKIE_DOMAIN', async (t) => {
  t.same(parseConfig({ COOKIE_SECURE: 'false' }).cookieNames, { access: 'access_token', refresh: 'refresh_token', binding: 'refresh_binding', flow: 'upstream_flow' })
  t.same(parseConfig({ COOKIE_DOMAIN: 'example.com' }).cookieNames, { access: '__Secure-access_token', refresh: '__Secure-refresh_token', binding: '__Host-refresh_binding', flow: '__Host-upstream_flow' })
})

t.test('TRUST_PROXY: off, a hop count, or addresses; never every hop', async (t) => {
  t.equal(parseConfig({}).trustProxy, false)
  t.equal(parseConfig({ TRUST_PROXY: 'false' }).trustProxy, false)
  // true would trust the leftmost X-Forwarded-For entry, which the client itself writes.
  t.throws(() => parseConfig({ TRUST_PROXY: 'true' }), { name: 'ConfigError', message: /^TRUST_PROXY=true would take a client address any client can write: give the number of proxies/ })
  const hops = parseConfig({ TRUST_PROXY: '1' }).trustProxy
  t.ok(hops !== false && hops('10.0.0.1', 0) && !hops('10.0.0.1', 1))
  const list = parseConfig({ TRUST_PROXY: '127.0.0.1, 10.0.0.0/8' }).trustProxy
  t.ok(list !== false && list('10.1.2.3', 0) && list('127.0.0.1', 0) && !list('192.0.2.1', 0))
})

t.test('a bad value is one message naming the variable and what it takes', async (t) => {
  const cases: Array<[Record<string, string | undefined>, string | RegExp]> = [
    [{ PORT: 'abc' }, 'PORT must be a whole number, not "abc"'],
    [{ PORT: '70000' }, 'PORT must be between 0 and 65535, not "70000"'],
    [{ JWT_ACCESS_TOKEN_LIFETIME: '5 minutes' }, 'JWT_ACCESS_TOKEN_LIFETIME must be a number of seconds, or a number with s, m, h or d (300, 15m, 12h, 7d), not "5 minutes"'],
    [{ JWT_REFRESH_TOKEN_LIFETIME: '-1d' }, /^JWT_REFRESH_TOKEN_LIFETIME must be a number of seconds/],
    [{ JWT_ACCESS_TOKEN_LIFETIME: '0' }, 'JWT_ACCESS_TOKEN_LIFETIME must be between 1s and 3650d, not 0'],
    [{ AUTH_SESSION_MAX_LIFETIME: '3651d' }, 'AUTH_SESSION_MAX_LIFETIME must be between 1s and 3650d, not 3651d'],
    [{ AUTH_SESSION_MAX_LIFETIME: '99999999999d' }, /^AUTH_SESSION_MAX_LIFETIME must be a number of seconds/],
    [{ BCRYPT_COST: '3' }, 'BCRYPT_COST must be between 4 and 15, not "3"'],
    [{ DB_ENGINE: 'mysql' }, 'DB_ENGINE must be one of pglite, postgres, not "mysql"'],
    [{ JWT_ALGORITHM: 'HS512' }, 'JWT_ALGORITHM must be one of ES256, EdDSA, RS256, HS256, not "HS512"'],
    [{ LOG_LEVEL: 'verbose' }, 'LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, not "verbose"'],
    [{ COOKIE_SAMESITE: 'sometimes' }, 'COOKIE_SAMESITE must be one of lax, strict, none, not "sometimes"'],
    [{ COOKIE_SECURE: 'maybe' }, 'COOKIE_SECURE must be true or false, not "maybe"'],
    [{ COOKIE_SAMESITE: 'none', COOKIE_SECURE: 'false' }, 'COOKIE_SAMESITE=none requires COOKIE_SECURE=true'],
    [{ DB_ENGINE: 'postgres', DATABASE_URL: 'mysql://x' }, /^DATABASE_URL must be a URL postgres:/],
    [{ DB_ENGINE: 'postgres' }, 'DATABASE_URL is required when DB_ENGINE=postgres'],
    [{ TRUST_PROXY: 'banana' }, /^TRUST_PROXY must be a hop count, or IP addresses\/CIDRs separated by commas: .*banana/],
    [{ SECRET_KEY: '' }, /^SECRET_KEY must be at least 32 characters: make one with `openssl rand -base64 48`/],
    [{ SECRET_KEY: 'short-secret' }, /^SECRET_KEY must be at least 32 characters/],
    [{ NODE_ENV: 'production', PUBLIC_URL: 'https://auth.example.com' }, /^SECRET_KEY is required when NODE_ENV=production: make one with/],
    [{ NODE_ENV: 'production', SECRET_KEY: GOOD_SECRET }, 'PUBLIC_URL is required when NODE_ENV=production: the URL clients reach authgate at, like https://auth.example.com'],
    [{ NODE_ENV: 'production', SECRET_KEY: GOOD_SECRET, PUBLIC_URL: 'https://auth.example.com', APP_RESET_URL: 'https://app.example.com/reset' }, 'APP_RESET_URL needs SMTP_URL when NODE_ENV=production: the password reset sends its link by mail'],
    [{ APP_RESET_URL: 'https://app.example.com/reset#token=' }, /^APP_RESET_URL must be an absolute http\(s\) URL without a fragment/],
    [{ EMAIL_VERIFICATION: 'required' }, 'EMAIL_VERIFICATION=required needs APP_VERIFY_URL: the page its mail\'s link opens'],
    [{ EMAIL_VERIFICATION: 'always', APP_VERIFY_URL: 'https://app.example.com/verify' }, 'EMAIL_VERIFICATION must be one of off, optional, required, not "always"'],
    [{ NODE_ENV: 'production', SECRET_KEY: GOOD_SECRET, PUBLIC_URL: 'https://auth.example.com', EMAIL_VERIFICATION: 'optional', APP_VERIFY_URL: 'https://app.example.com/verify' }, 'EMAIL_VERIFICATION=optional needs SMTP_URL when NODE_ENV=production'],
    [{ NODE_ENV: 'production', SECRET_KEY: GOOD_SECRET, PUBLIC_URL: 'https://auth.example.com', EMAIL_SIGN_IN: 'true' }, 'EMAIL_SIGN_IN=true needs SMTP_URL when NODE_ENV=production'],
    [{ APP_VERIFY_URL: 'verify-email' }, /^APP_VERIFY_URL must be an absolute http\(s\) URL without a fragment/],
    [{ EMAIL_SIGN_IN_LIFETIME: '30s' }, /^EMAIL_SIGN_IN_LIFETIME must be/],
    [{ DATABASE_URL: 'postgres://db/x', DB_ENGINE: 'pglite' }, 'DATABASE_URL is set but DB_ENGINE=pglite: unset DB_ENGINE to run on the PostgreSQL of DATABASE_URL, or unset DATABASE_URL'],
    [{ DATABASE_LISTEN_URL: 'postgres://db/x' }, 'DATABASE_LISTEN_URL is for PostgreSQL: set DATABASE_URL too'],
    [{ JWT_PRIVATE_KEY: 'not a pem' }, 'JWT_PRIVATE_KEY must be a PEM private key for JWT_ALGORITHM=ES256: it is not a PEM private key'],
    [{ JWT_PRIVATE_KEY: ED25519_PEM }, 'JWT_PRIVATE_KEY must be a PEM private key for JWT_ALGORITHM=ES256: it is one for EdDSA'],
    [{ JWT_PRIVATE_KEY: P384_PEM, JWT_ALGORITHM: 'ES256' }, /^JWT_PRIVATE_KEY must be a PEM private key for JWT_ALGORITHM=ES256: a ec key on secp384r1 is not one authgate signs with/],
    [{ JWT_PRIVATE_KEY: ED25519_PEM, JWT_ALGORITHM: 'HS256' }, /^JWT_PRIVATE_KEY must be a PEM private key for JWT_ALGORITHM=HS256/],
    [{ JWT_PRIVATE_KEY: ED25519_PEM, JWT_PRIVATE_KEY_FILE: '/x', JWT_ALGORITHM: 'EdDSA' }, 'set JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE, not both']
  ]
  for (const [env, message] of cases) {
    const error = (() => { try { parseConfig(env); return undefined } catch (e) { return e as Error } })()
    t.type(error, ConfigError, JSON.stringify(env))
    if (typeof message === 'string') t.equal(error?.message, message)
    else t.match(error?.message, message)
    t.notMatch(error?.message, /\n|must be equal to constant|must match pattern/, 'one plain line')
  }
  t.equal(
    (() => { try { parseConfig({ PORT: 'x', DB_ENGINE: 'oracle' }) } catch (e) { return (e as Error).message } })(),
    'PORT must be a whole number, not "x"; DB_ENGINE must be one of pglite, postgres, not "oracle"',
    'every bad variable at once'
  )
  t.match(
    (() => { try { parseConfig({ PORT: 'x', SECRET_KEY: 'short', JWT_ACCESS_TOKEN_LIFETIME: '0', BCRYPT_COST: '99' }) } catch (e) { return (e as Error).message } })(),
    /^PORT must be a whole number, not "x"; BCRYPT_COST must be between 4 and 15, not "99"; JWT_ACCESS_TOKEN_LIFETIME must be between 1s and 3650d, not 0; SECRET_KEY must be at least 32 characters/,
    'the checks after the schema run too: a short SECRET_KEY is named beside the schema\'s findings'
  )
})

const GOOD_SECRET = 'kQ2v9Zs1pX7mB4nR8tW3yL6cF0hJ5dGa'
const PRODUCTION = { NODE_ENV: 'production', PUBLIC_URL: 'https://auth.example.com', SECRET_KEY: GOOD_SECRET }

t.test('secrets that look guessable are refused in production, saying how to make one', async (t) => {
  const refusals: Array<[Record<string, string>, RegExp]> = [
    [{ SECRET_KEY: 'a'.repeat(32) }, /^SECRET_KEY looks guessable \(repeated or few distinct characters: about 0 bits, at least 96 needed\) in production: make one with `openssl rand -base64 48`/],
    [{ SECRET_KEY: 'abcd'.repeat(10) }, /^SECRET_KEY looks guessable/],
    [{ SECRET_KEY: 'correcthorse'.repeat(3) }, /^SECRET_KEY looks guessable/],
    [{ METRICS_TOKEN: 'x'.repeat(16) }, /^METRICS_TOKEN looks guessable/],
    [{ METRICS_TOKEN: 'abab'.repeat(8) }, /^METRICS_TOKEN looks guessable/],
    [{ INTROSPECTION_CLIENTS: `orders:${'1'.repeat(20)}` }, /^INTROSPECTION_CLIENTS: the secret of orders looks guessable/]
  ]
  for (const [env, message] of refusals) {
    t.throws(() => parseConfig({ ...PRODUCTION, ...env }), { name: 'ConfigError', message }, JSON.stringify(env))
    t.doesNotThrow(() => parseConfig({ ...env, SECRET_KEY: env.SECRET_KEY ?? GOOD_SECRET }), 'development takes it')
  }
  // What the tools make passes: 32 hex digits, 16 base64 characters, a long random text.
  for (const env of [
    { SECRET_KEY: randomBytes(16).toString('hex') },
    { SECRET_KEY: randomBytes(48).toString('base64') },
    { METRICS_TOKEN: randomBytes(12).toString('base64') },
    { INTROSPECTION_CLIENTS: `orders:${randomBytes(12).toString('base64url')}` }
  ]) t.doesNotThrow(() => parseConfig({ ...PRODUCTION, ...env }), JSON.stringify(env))
})

t.test('DATABASE_URL means PostgreSQL; the issuer is the public URL; docs are off in production', async (t) => {
  t.equal(parseConfig({ DATABASE_URL: 'postgres://db/authgate', SECRET_KEY: GOOD_SECRET }).DB_ENGINE, 'postgres')
  t.equal(parseConfig({}).DB_ENGINE, 'pglite')
  t.equal(parseConfig({ PUBLIC_URL: 'https://auth.example.com/' }).JWT_ISSUER, 'https://auth.example.com', 'PUBLIC_URL without its trailing slash')
  t.equal(parseConfig({ PUBLIC_URL: 'https://auth.example.com/' }).publicUrl, 'https://auth.example.com')
  t.equal(parseConfig({ PORT: '8080' }).JWT_ISSUER, 'http://localhost:8080', 'unset, the local URL')
  t.equal(parseConfig({ PUBLIC_URL: 'https://auth.example.com', JWT_ISSUER: 'authgate' }).JWT_ISSUER, 'authgate', 'kept for existing verifiers')
  t.equal(parseConfig({}).DOCS_ENABLED, true)
  t.equal(parseConfig(PRODUCTION).DOCS_ENABLED, false)
  t.equal(parseConfig({ ...PRODUCTION, DOCS_ENABLED: 'true' }).DOCS_ENABLED, true)
})

t.test('JWT_PRIVATE_KEY_FILE that cannot be read names itself', async (t) => {
  await t.rejects(loadConfig({ JWT_PRIVATE_KEY_FILE: '/nonexistent/signing.pem', DB_NAME: 'memory://' }), { name: 'ConfigError', message: 'JWT_PRIVATE_KEY_FILE /nonexistent/signing.pem cannot be read: ENOENT' })
  t.equal(parseConfig({ JWT_PRIVATE_KEY: ED25519_PEM, JWT_ALGORITHM: 'EdDSA' }).JWT_PRIVATE_KEY, ED25519_PEM)
})

t.test('the development secret', async (t) => {
  const folder = await mkdtemp(join(tmpdir(), 'authgate-config-'))
  t.teardown(() => rm(folder, { recursive: true, force: true }))

  t.test('is generated once into a data folder that did not exist, readable by the owner only', async (t) => {
    const dataFolder = join(folder, 'does', 'not', 'exist')
    const warnings: string[] = []
    const first = await loadConfig({ DB_NAME: dataFolder }, (m) => warnings.push(m))
    t.ok(first.SECRET_KEY.length >= 32)
    t.match(warnings, [/SECRET_KEY is not set: generated one into .*secret_key \(development only\)/])
    t.equal((await stat(join(dataFolder, 'secret_key'))).mode & 0o777, 0o600)
    t.equal((await stat(dataFolder)).mode & 0o777, 0o700, 'the data folder is the owner\'s alone')
    t.equal(await readFile(join(dataFolder, '.gitignore'), 'utf8'), '*\n', 'and stays out of git')
    t.equal((await loadConfig({ DB_NAME: dataFolder })).SECRET_KEY, first.SECRET_KEY, 'the same secret on the next start')
  })

  t.test('processes starting together all read the one secret written', async (t) => {
    const dataFolder = join(folder, 'together')
    const secrets = await Promise.all(Array.from({ length: 8 }, () => loadConfig({ DB_NAME: dataFolder })))
    t.equal(new Set(secrets.map((c) => c.SECRET_KEY)).size, 1)
  })

  t.test('an empty or short secret file is refused, naming it', async (t) => {
    for (const content of ['', 'short\n']) {
      const dataFolder = await mkdtemp(join(folder, 'short-'))
      await writeFile(join(dataFolder, 'secret_key'), content)
      await t.rejects(loadConfig({ DB_NAME: dataFolder }), /secret_key holds a secret of \d+ characters; at least 32 are needed/)
    }
  })

  t.test('on PostgreSQL none is generated: the start stops, asking for one to keep with the database', async (t) => {
    // ./data would hold the key apart from the database it seals: deleting ./data to start over
    // would leave a PostgreSQL database whose signing keys no key opens.
    const cwd = process.cwd()
    const dir = await mkdtemp(join(folder, 'postgres-'))
    process.chdir(dir)
    t.teardown(() => process.chdir(cwd))
    await t.rejects(loadConfig({ DATABASE_URL: 'postgres://db/authgate' }), {
      name: 'ConfigError',
      message: /^SECRET_KEY is required on PostgreSQL \(DATABASE_URL\), in development too: the signing keys in the database are sealed with it, and a key generated into \.\/data would part from the database it seals: make one with `openssl rand -base64 48`.*, and keep it with the database$/
    })
    t.same(await readdir(dir), [], 'nothing written: no ./data, no secret_key')
    t.equal((await loadConfig({ DATABASE_URL: 'postgres://db/authgate', SECRET_KEY: GOOD_SECRET })).SECRET_KEY, GOOD_SECRET, 'with one set, it starts')
  })

  t.test('an in-memory database gets a random secret, with a warning', async (t) => {
    const warnings: string[] = []
    const config = await loadConfig({ DB_NAME: 'memory://' }, (m) => warnings.push(m))
    t.ok(config.SECRET_KEY.length >= 32)
    t.match(warnings, [/using a random one for this in-memory run/])
  })
})

t.test('passkeys: WEBAUTHN_RP_ID a domain in lower case, WEBAUTHN_ORIGINS exact origins on it; a bad value refuses the start naming the variable', async (t) => {
  t.equal(parseConfig({}).features.passkeys, false, 'off without WEBAUTHN_RP_ID')
  t.match(parseConfig({ WEBAUTHN_RP_ID: 'example.com' }), { features: { passkeys: true }, passkeyOrigins: ['https://example.com'], WEBAUTHN_RP_NAME: 'authgate' }, 'the RP id\'s own https origin by default')
  t.same(parseConfig({ WEBAUTHN_RP_ID: 'example.com', WEBAUTHN_ORIGINS: 'https://app.example.com, https://example.com:8443' }).passkeyOrigins, ['https://app.example.com', 'https://example.com:8443'])
  t.same(parseConfig({ WEBAUTHN_RP_ID: 'localhost', WEBAUTHN_ORIGINS: 'http://localhost:5173' }).passkeyOrigins, ['http://localhost:5173'], 'http on localhost, as browsers allow')

  for (const rpId of ['https://example.com', 'Example.com', 'example.com:443', 'example.com/login', 'example.com.', '*.example.com', '127.0.0.1', '10.0.0.1']) {
    t.throws(() => parseConfig({ WEBAUTHN_RP_ID: rpId }), { name: 'ConfigError', message: /^WEBAUTHN_RP_ID must be a domain in lower case/ }, rpId)
  }
  for (const origins of [
    'https://evil.example.net', // another domain
    'https://notexample.com', // a name that ends with the RP id, not a subdomain of it
    'http://app.example.com', // http, not on localhost
    'http://localhost:5173', // localhost is not on example.com
    'https://app.example.com/login', // not an origin
    'https://*.example.com',
    'https://app.example.com,https://evil.example.net' // one bad of two
  ]) {
    t.throws(() => parseConfig({ WEBAUTHN_RP_ID: 'example.com', WEBAUTHN_ORIGINS: origins }), { name: 'ConfigError', message: /^WEBAUTHN_ORIGINS must be exact origins/ }, origins)
  }
  t.throws(() => parseConfig({ WEBAUTHN_ORIGINS: 'https://example.com' }), { name: 'ConfigError', message: /^WEBAUTHN_ORIGINS needs WEBAUTHN_RP_ID/ }, 'origins without an RP id')
  // https://localhost would be no laptop's front end: every passkey refused, said nowhere.
  t.throws(() => parseConfig({ WEBAUTHN_RP_ID: 'localhost' }), { name: 'ConfigError', message: /^WEBAUTHN_RP_ID=localhost needs WEBAUTHN_ORIGINS/ }, 'localhost has no default origin')
})
