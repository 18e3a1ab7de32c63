// Apache httpd with mod_auth_openidc as an OAuth 2.0 resource server in front of an app: the
// The two configurations of docs/tokens.md (the JWKS, and introspection) run against a real Apache.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { chmod, copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer as createHttpsServer } from 'node:https'
import { connect, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createSigner } from 'fast-jwt'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { SecretBox } from '../src/lib/secret-box.ts'
import { loadSigningKeys, rotateSigningKey } from '../src/services/keys/signing-keys.ts'
import { echoUpstream, HOST, stop, WAIT_MS, type Upstream } from './gateway-proof.ts'
import { bearer, build, claimsOf, login, postJson, register, SECRET_KEY, TestClock } from './helper.ts'
import { freePort, listensOn } from './server-process.ts'

const APACHE = '/usr/sbin/apache2'
const MODULES = '/usr/lib/apache2/modules'
const apacheMissing = !existsSync(APACHE)
  ? `no ${APACHE} on this machine: apt-get install apache2 (.ci/run does)`
  : !existsSync(join(MODULES, 'mod_auth_openidc.so'))
      ? `no ${join(MODULES, 'mod_auth_openidc.so')} on this machine: apt-get install libapache2-mod-auth-openidc (.ci/run does)`
      : false

// mod_auth_openidc 2.4.12 (Debian 12) takes only https:// URLs for OIDCOAuthVerifyJwksUri and
// OIDCOAuthIntrospectionEndpoint, so authgate answers over TLS too, with this test-only
// certificate for 127.0.0.1 (self-signed, to 2126) that Apache trusts through OIDCCABundlePath.
const TLS_CERT = join(import.meta.dirname, 'apache', 'tls-cert.pem')
const TLS_KEY = join(import.meta.dirname, 'apache', 'tls-key.pem')

const CLIENT_ID = 'apache'

/** Where the docs' names point here: auth.example.com (TLS), authgate:3000 and app:8080. */
interface Urls { authgateTls: string, authgate: string, app: string }

/** The Apache configuration of docs/tokens.md with the JWKS: mod_auth_openidc verifies each token itself. */
function jwksConfig (urls: Urls, issuer: string, audience: string): string {
  return `
# https:// only (mod_auth_openidc 2.4.12); fetched again for a kid it does not hold.
OIDCOAuthVerifyJwksUri ${urls.authgateTls}/.well-known/jwks.json

ProxyPass /api/ ${urls.authgate}/api/
ProxyPass / ${urls.app}/

<Location />
  # The app gets the claims as OIDC_CLAIM_* headers (any the client sent are dropped).
  AuthType oauth20
  <RequireAll>
    Require claim iss:${issuer}
    Require claim aud:${audience}
    Require claim token_type:access
  </RequireAll>
</Location>
<Location /api/>
  # authgate's own routes: signing in needs no token.
  Require all granted
</Location>
`
}

/** The Apache configuration of docs/tokens.md with introspection: mod_auth_openidc asks authgate at every request. */
function introspectionConfig (urls: Urls, secret: string): string {
  return `
OIDCOAuthIntrospectionEndpoint ${urls.authgateTls}/api/token/introspect
OIDCOAuthIntrospectionEndpointAuth client_secret_basic
OIDCOAuthClientID ${CLIENT_ID}
OIDCOAuthClientSecret ${secret}
# Without it, an answer is cached until the token's exp: a logged-out token would pass until then.
OIDCOAuthTokenIntrospectionInterval -1

ProxyPass /api/ ${urls.authgate}/api/
ProxyPass / ${urls.app}/

<Location />
  AuthType oauth20
  Require claim token_type:Bearer
</Location>
<Location /api/>
  # authgate's own routes: signing in needs no token.
  Require all granted
</Location>
`
}

/** docs/tokens.md's cache settings for introspection answers: keys hashed (OIDCCacheEncrypt). */
const CACHE_CONFIG = `
OIDCCacheEncrypt On
OIDCCryptoPassphrase a-passphrase-of-at-least-32-random-characters
`

/** What the docs leave out: a private ServerRoot, the port, the modules, the test CA. */
function apacheConfig (dir: string, port: number, readme: string): string {
  const modules = ['mpm_event', 'authn_core', 'authz_core', 'proxy', 'proxy_http', 'auth_openidc']
  return `
ServerRoot ${dir}
DefaultRuntimeDir ${dir}
PidFile ${join(dir, 'httpd.pid')}
ErrorLog ${join(dir, 'error.log')}
LogLevel warn
# %u: the REMOTE_USER mod_auth_openidc set (OIDCOAuthRemoteUserClaim, sub by default).
CustomLog ${join(dir, 'access.log')} "%u %>s %r"
Listen ${HOST}:${port}
ServerName ${HOST}
# As root, Apache serves as another user (Debian's www-data); it cannot serve as root.
${process.getuid?.() === 0 ? 'User www-data\nGroup www-data' : ''}
${modules.map((m) => `LoadModule ${m}_module ${join(MODULES, `mod_${m}.so`)}`).join('\n')}
OIDCCABundlePath ${join(dir, 'tls-cert.pem')}
${readme}`
}

interface Apache {
  url: string
  /** Whether `line` ("<REMOTE_USER> <status> <request line>") reaches the access log within WAIT_MS. */
  logged: (line: string) => Promise<boolean>
}

/** Apache in the foreground (-X: one process) on a free port with `readme`, stopped by its pid at teardown. */
async function startApache (t: Test, name: string, readme: string): Promise<Apache> {
  // Teardowns run last-registered first: Apache stops before its folder goes.
  const dir = await mkdtemp(join(tmpdir(), `authgate-apache-${name}-`))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // The serving user reads the CA at each call to authgate: as root, that is www-data.
  if (process.getuid?.() === 0) await chmod(dir, 0o755)
  await copyFile(TLS_CERT, join(dir, 'tls-cert.pem'))
  // Up once Apache itself listens on its port (listensOn) and answers; a start that lost its port
  // to another test's server between freePort() and its bind is made again on another.
  let port = 0
  for (let attempt = 1; ; attempt++) {
    port = await freePort()
    const conf = join(dir, 'httpd.conf')
    // 0600: it holds the introspection secret; Apache reads it before it switches user.
    await writeFile(conf, apacheConfig(dir, port, readme), { mode: 0o600 })
    // libcurl in mod_auth_openidc follows *_proxy variables: authgate is on 127.0.0.1, reached directly.
    const env = Object.fromEntries(Object.entries(process.env).filter(([variable]) => !/_proxy$/i.test(variable)))
    const child = spawn(APACHE, ['-X', '-f', conf], { env, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    t.teardown(() => stop(child, 'SIGTERM'))
    const output = async (): Promise<string> => stderr + await readFile(join(dir, 'error.log'), 'utf8').catch(() => '')
    const bound = async (): Promise<boolean> => await listensOn(child.pid, port) && await answers(port)

    const deadline = Date.now() + WAIT_MS
    while (child.exitCode === null && !await bound()) {
      if (Date.now() > deadline) throw new Error(`apache2 did not answer on ${HOST}:${port} within ${WAIT_MS} ms: ${await output()}`)
      await sleep(50)
    }
    if (child.exitCode === null) break
    const why = await output()
    if (attempt >= 5 || !/could not bind|Address already in use/.test(why)) throw new Error(`apache2 exited (${child.exitCode}): ${why}`)
  }
  return {
    url: `http://${HOST}:${port}`,
    // Apache writes the line once the response has gone: the client may read the log before.
    async logged (line) {
      for (const end = Date.now() + WAIT_MS; Date.now() < end; await sleep(20)) {
        if ((await readFile(join(dir, 'access.log'), 'utf8')).split('\n').includes(line)) return true
      }
      return false
    }
  }
}

async function answers (port: number): Promise<boolean> {
  const socket = connect(port, HOST)
  try {
    await once(socket, 'connect')
    return true
  } catch {
    return false
  } finally {
    socket.destroy()
  }
}

/** authgate on plain HTTP (for /api/ through Apache) and on TLS (for mod_auth_openidc), both closed at teardown. */
async function serveAuthgate (t: Test, app: FastifyInstance): Promise<Pick<Urls, 'authgate' | 'authgateTls'>> {
  await app.listen({ host: HOST, port: 0 })
  // The same app behind a TLS listener: Fastify's own request handler.
  const tls = createHttpsServer({ cert: await readFile(TLS_CERT), key: await readFile(TLS_KEY) }, (req, res) => app.routing(req, res))
  tls.listen(0, HOST)
  await once(tls, 'listening')
  t.teardown(async () => {
    tls.closeAllConnections()
    tls.close()
    await once(tls, 'close')
  })
  return { authgate: `http://${HOST}:${(app.server.address() as AddressInfo).port}`, authgateTls: `https://${HOST}:${(tls.address() as AddressInfo).port}` }
}

/** A request through Apache, bounded by WAIT_MS. */
function through (apache: Apache, path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${apache.url}${path}`, { ...init, signal: AbortSignal.timeout(WAIT_MS) })
}

/** Asserts Apache refused `token` with a 401 and never called the app. */
async function refused (t: Test, apache: Apache, upstream: Upstream, token: string, message: string): Promise<Response> {
  const before = upstream.saw.length
  const res = await through(apache, '/orders', { headers: bearer(token) })
  t.equal(res.status, 401, message)
  t.equal(upstream.saw.length, before, `${message}: the app is not called`)
  return res
}

function logout (app: FastifyInstance, access: string): Promise<{ statusCode: number }> {
  return postJson(app, '/api/auth/logout', {}, bearer(access))
}

t.test('Apache httpd with mod_auth_openidc in front of an app', { skip: apacheMissing }, async (t) => {
  const secret = randomBytes(24).toString('base64url')
  const app = await build(t, { env: { INTROSPECTION_CLIENTS: `${CLIENT_ID}:${secret}` } })
  const upstream = await echoUpstream(t)
  const urls: Urls = { ...await serveAuthgate(t, app), app: upstream.url }
  const { issuer } = await (await fetch(`${urls.authgate}/.well-known/openid-configuration`)).json() as { issuer: string }
  const audience = claimsOf((await login(app)).access).aud as string
  const box = new SecretBox(SECRET_KEY, 'signing-keys')

  /** A token signed with the app's current key: what only authgate could have made, with these claims. */
  async function signed (claims: Record<string, unknown>): Promise<string> {
    const key = (await loadSigningKeys(app.db, box, 0)).find((k) => !k.next && k.retiredAt === null)!
    const sign = createSigner({ key: key.privateKey, algorithm: 'ES256', kid: key.kid, header: { alg: 'ES256', typ: 'at+jwt' } })
    const now = Math.floor(Date.now() / 1000)
    return sign({ token_type: 'access', user_id: 1, sub: '1', iss: issuer, aud: audience, iat: now, exp: now + 300, ...claims })
  }

  t.test('the JWKS: OIDCOAuthVerifyJwksUri and Require claim', async (t) => {
    const apache = await startApache(t, 'jwks', jwksConfig(urls, issuer, audience))

    t.test('no token: 401 with a Bearer challenge, the app is never called', async (t) => {
      const before = upstream.saw.length
      const res = await through(apache, '/orders')
      t.equal(res.status, 401)
      t.match(res.headers.get('www-authenticate'), /^Bearer /)
      t.equal(upstream.saw.length, before)
    })

    t.test('an access token: the app sees its claims in OIDC_CLAIM_* headers, REMOTE_USER is sub', async (t) => {
      const { access, user } = await login(app)
      const victim = await login(app)
      // Headers of mod_auth_openidc's names sent by the client, with _ or -: scrubbed, never passed on.
      const res = await through(apache, '/orders?mine', {
        headers: { ...bearer(access), OIDC_CLAIM_user_id: String(victim.user.id), 'OIDC-CLAIM-sub': String(victim.user.id) }
      })
      t.equal(res.status, 200)
      const saw = await res.json() as Record<string, string>
      t.equal(saw.oidc_claim_user_id, String(user.id))
      t.equal(saw.oidc_claim_sub, String(user.id))
      t.equal(saw.oidc_claim_sid, claimsOf(access).sid)
      t.equal(saw.oidc_claim_token_type, 'access')
      t.equal(saw.oidc_claim_iss, issuer)
      t.equal(saw.oidc_access_token, access, 'and the token itself in OIDC_access_token')
      t.notOk('oidc-claim-sub' in saw, 'the client\'s OIDC-CLAIM-sub is dropped')
      // mod_proxy passes no REMOTE_USER: it is for Apache itself (logs, Require user).
      t.notOk(Object.keys(saw).some((name) => /remote.user/i.test(name)), 'no REMOTE_USER header')
      t.ok(await apache.logged(`${user.id} 200 GET /orders?mine HTTP/1.1`), 'REMOTE_USER is the token\'s sub')
    })

    t.test('the refresh token: 401, its key (HS256, kid "refresh") is never in the JWKS', async (t) => {
      const { refresh } = await login(app)
      t.equal(claimsOf(refresh).token_type, 'refresh')
      const res = await refused(t, apache, upstream, refresh, 'the refresh token is refused')
      t.match(res.headers.get('www-authenticate'), /invalid_token.*JWT token could not be validated/, 'by its signature')
    })

    t.test('tokens authgate did not sign as they are: 401', async (t) => {
      const { access } = await login(app)
      const [header, payload] = access.split('.') as [string, string, string]
      const claims = JSON.parse(Buffer.from(payload, 'base64url').toString())
      const tampered = Buffer.from(JSON.stringify({ ...claims, user_id: claims.user_id + 1, sub: String(claims.user_id + 1) })).toString('base64url')
      await refused(t, apache, upstream, `${header}.${tampered}.${access.split('.')[2]}`, 'a token with its claims changed')
      const none = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(header, 'base64url').toString()), alg: 'none' })).toString('base64url')
      await refused(t, apache, upstream, `${none}.${payload}.`, 'a token with alg none')
      const now = Math.floor(Date.now() / 1000)
      await refused(t, apache, upstream, await signed({ iat: now - 900, exp: now - 600 }), 'an expired token signed with the key')
    })

    t.test('each Require claim holds: tokens signed with the key but for another use are refused', async (t) => {
      const ok = await through(apache, '/orders', { headers: bearer(await signed({})) })
      t.equal(ok.status, 200, 'the claims of an access token pass')
      for (const [claims, message] of [[{ iss: 'someone-else' }, 'another issuer'], [{ aud: 'someone-else' }, 'another audience'], [{ token_type: 'refresh' }, 'token_type refresh']] as const) {
        const res = await refused(t, apache, upstream, await signed(claims), message)
        // A Require that fails answers 401 without a challenge; a token that does not verify, with one.
        t.equal(res.headers.get('www-authenticate'), null, `${message}: by its Require claim`)
      }
    })

    t.test('a key rotation: the JWKS is fetched again for the new kid, the old key still verifies', async (t) => {
      const before = await login(app)
      t.equal((await through(apache, '/orders', { headers: bearer(before.access) })).status, 200)
      await rotateSigningKey(app.db, box, 'ES256')
      await app.keyring.reload()
      const after = await login(app)
      const kid = (token: string): unknown => JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString()).kid
      t.not(kid(after.access), kid(before.access), 'the app signs with the new key')
      t.equal((await through(apache, '/orders', { headers: bearer(after.access) })).status, 200, 'the new key\'s token')
      t.equal((await through(apache, '/orders', { headers: bearer(before.access) })).status, 200, 'the old key\'s token')
    })

    t.test('/api/ goes to authgate without a token: login through Apache', async (t) => {
      const { user } = await login(app)
      const res = await through(apache, '/api/auth/login', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ identifier: user.username, password: user.password })
      })
      t.equal(res.status, 200)
      const { access } = await res.json() as { access: string }
      t.equal((await through(apache, '/orders', { headers: bearer(access) })).status, 200)
    })

    t.test('a logout does not reach a JWKS check: the token passes until its exp', async (t) => {
      const { access } = await login(app)
      t.equal((await logout(app, access)).statusCode, 204)
      t.equal((await through(apache, '/orders', { headers: bearer(access) })).status, 200)
    })
  })

  t.test('introspection: OIDCOAuthIntrospectionEndpoint with INTROSPECTION_CLIENTS credentials', async (t) => {
    const apache = await startApache(t, 'introspection', introspectionConfig(urls, secret))

    t.test('no token: 401, the app is never called', async (t) => {
      const before = upstream.saw.length
      const res = await through(apache, '/orders')
      t.equal(res.status, 401)
      t.match(res.headers.get('www-authenticate'), /^Bearer /)
      t.equal(upstream.saw.length, before)
    })

    t.test('an access token: the app sees the introspection\'s claims, the username too', async (t) => {
      const { access, user } = await login(app)
      const res = await through(apache, '/orders', { headers: bearer(access) })
      t.equal(res.status, 200)
      const saw = await res.json() as Record<string, string>
      t.equal(saw.oidc_claim_user_id, String(user.id))
      t.equal(saw.oidc_claim_sub, String(user.id))
      t.equal(saw.oidc_claim_username, user.username)
      t.equal(saw.oidc_claim_sid, claimsOf(access).sid)
      t.equal(saw.oidc_claim_token_type, 'Bearer', 'the OAuth token type (RFC 7662 §2.2)')
    })

    t.test('logout: the same token is refused at the very next request', async (t) => {
      const { access } = await login(app)
      t.equal((await through(apache, '/orders', { headers: bearer(access) })).status, 200)
      t.equal((await logout(app, access)).statusCode, 204)
      const res = await refused(t, apache, upstream, access, 'the logged-out token is refused')
      t.match(res.headers.get('www-authenticate'), /invalid_token.*Reference token could not be introspected/, 'introspection answers inactive')
    })

    t.test('the refresh token as Bearer: authgate\'s introspection answers inactive', async (t) => {
      const { refresh } = await login(app)
      const res = await refused(t, apache, upstream, refresh, 'the refresh token is refused')
      // Refused by the introspection ({"active":false}: a challenge), not only by Require claim
      // token_type:Bearer (a 401 without one).
      t.match(res.headers.get('www-authenticate'), /invalid_token.*Reference token could not be introspected/, 'introspection answers {"active":false} for a refresh token')
    })

    t.test('a token authgate did not sign as it is: 401', async (t) => {
      const { access } = await login(app)
      const [header, payload, signature] = access.split('.') as [string, string, string]
      const claims = JSON.parse(Buffer.from(payload, 'base64url').toString())
      const tampered = Buffer.from(JSON.stringify({ ...claims, user_id: claims.user_id + 1, sub: String(claims.user_id + 1) })).toString('base64url')
      await refused(t, apache, upstream, `${header}.${tampered}.${signature}`, 'a token with its claims changed')
    })
  })

  t.test('introspection with mod_auth_openidc\'s default cache: a logged-out token passes until its exp', async (t) => {
    // Tokens of 10 s on the real time (a TestClock never moved, but for `now`): Apache keeps an
    // introspection answer until the token's exp. With 5 s, a run of .ci/run logged out 3,966 ms
    // before exp: the steps up to the first pass took a second of the five on a loaded machine.
    const lifetimeS = 10
    const short = await build(t, { clock: Object.assign(new TestClock(), { now: () => new Date() }), env: { INTROSPECTION_CLIENTS: `${CLIENT_ID}:${secret}`, JWT_ACCESS_TOKEN_LIFETIME: String(lifetimeS), ROLES: 'editor,viewer' } })
    const shortUrls: Urls = { ...await serveAuthgate(t, short), app: upstream.url }
    const readme = introspectionConfig(shortUrls, secret)
    // The cache of docs/tokens.md: keys hashed, so that a token of any length is kept.
    const withoutInterval = readme.replace(/^.*\n.*OIDCOAuthTokenIntrospectionInterval.*\n/m, '') + CACHE_CONFIG
    t.notMatch(withoutInterval, /OIDCOAuthTokenIntrospectionInterval/)
    const apache = await startApache(t, 'introspection-cache', withoutInterval)

    // A user with roles: a token longer than the 511 bytes Apache's cache takes as a key unhashed.
    const user = await register(short)
    await short.db.updateTable('users').set({ roles: ['editor', 'viewer'] }).where('id', '=', user.id).execute()
    const { access } = await login(short, user)
    t.ok(access.length > 511, `a token of ${access.length} characters`)
    const expMs = (claimsOf(access).exp as number) * 1000
    t.equal((await through(apache, '/orders', { headers: bearer(access) })).status, 200)
    t.equal((await logout(short, access)).statusCode, 204)
    const loggedOutAt = Date.now()
    const introspected = await fetch(`${shortUrls.authgate}/api/token/introspect`, {
      method: 'POST',
      headers: { authorization: `Basic ${Buffer.from(`${CLIENT_ID}:${secret}`).toString('base64')}` },
      body: new URLSearchParams({ token: access })
    })
    t.same(await introspected.json(), { active: false }, 'authgate itself says the token is no longer active')

    // Through Apache every 100 ms until it refuses: the passes after the logout reach the app.
    let passes = 0
    let reached = 0
    let refusedAt: number | undefined
    while (refusedAt === undefined && Date.now() < expMs + WAIT_MS) {
      const before = upstream.saw.length
      const res = await through(apache, '/orders', { headers: bearer(access) })
      if (res.status !== 200) {
        t.equal(res.status, 401)
        refusedAt = Date.now()
        break
      }
      passes++
      reached += upstream.saw.length - before
      await sleep(100)
    }
    t.ok(passes > 0, 'after the logout the token still passes: the cached answer')
    t.equal(reached, passes, 'and each of those requests reaches the app')
    t.ok(refusedAt !== undefined && refusedAt >= expMs, 'until its exp, not before')
    // Had the cache outlived exp, nothing would refuse it before the hang bound (WAIT_MS past exp).
    t.ok(refusedAt !== undefined, 'and is refused once exp has passed')
    t.comment(`logged out ${expMs - loggedOutAt} ms before exp; passed ${passes} times after it; refused ${(refusedAt ?? NaN) - expMs} ms after exp`)
  })
})
