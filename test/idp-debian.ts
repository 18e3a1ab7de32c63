import { spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { gunzipSync } from 'node:zlib'
import type { Page } from 'playwright-core'
import type { Test } from 'tap'
import { freePort } from './server-process.ts'

/**
 * An OpenID Connect provider nobody here wrote, from Debian's packages: Glewlwyd 2.7 (bookworm's
 * `glewlwyd`, a C single sign-on server) with its `oidc` plugin, on 127.0.0.1.
 */
export interface DebianProvider {
  name: 'glewlwyd'
  /** Exact issuer as in its discovery document: `http://127.0.0.1:<port>/api/oidc`. */
  issuer: string
  clientId: string
  clientSecret: string
  /**
   * Browser-less: GETs the authorization URL with a cookie jar, signs in as the user through
   * Glewlwyd's own login API (POST /api/auth/ with username and password, what its login page
   * sends), grants the scopes the login page shows (PUT /api/auth/grant/<client_id>, its consent
   * button), then follows the login page's `callback_url` (with `g_continue`) and the redirects
   * until one leaves the provider; returns that URL: the redirect_uri with iss, state and code
   * (or with error). Rejects when the password is refused.
   */
  authorize: (authorizationUrl: string, username: string, password: string) => Promise<URL>
  /**
   * The provider's own login page for a browser (its React web app, served by Glewlwyd from a
   * copy in the folder): the authorization endpoint redirects to
   * `/login.html?client_id=…&scope=…&callback_url=…`; signInOnGlewlwydPages fills it in Chromium,
   * and Continue goes back to the authorization endpoint, which redirects to the redirect_uri
   * with iss, state and code.
   */
  loginPage: string
  /** Everything Glewlwyd logged (stdout and stderr), for failure messages. */
  output: () => string
  /** Stops Glewlwyd by its pid (SIGTERM, SIGKILL after 5 s) and removes its folder; also at teardown. */
  close: () => Promise<void>
}

/** Debian's paths (packages `glewlwyd` and `glewlwyd-common`). */
const GLEWLWYD = '/usr/bin/glewlwyd'
const SCHEMA = '/usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz'
const WEBAPP = '/usr/share/glewlwyd/webapp'
const WEBAPP_CONFIG = '/etc/glewlwyd/config-2.7.json/config.json'
const MODULES = '/usr/lib/glewlwyd'

/**
 * Why the Debian provider cannot run here, or false when it can: for `t.test(…, { skip })`.
 * CI installs it (.ci/run: `apt-get install glewlwyd`).
 */
/**
 * A browser's sign-in on Glewlwyd's own pages, from its login page on: the password, then, the
 * first time for this client, the consent card (openid is granted already; email and profile
 * are checked), then Continue, which sends the browser on to the relying party.
 */
export async function signInOnGlewlwydPages (page: Page, user: { username: string, password: string }): Promise<void> {
  await page.fill('#username', user.username)
  await page.fill('#password', user.password)
  await page.click('#loginbut')
  await page.check('#grant-email')
  await page.check('#grant-profile')
  await page.getByRole('button', { name: 'Grant access' }).click()
  await page.getByRole('button', { name: 'Continue' }).click()
}

export const debianProviderMissing: string | false = [GLEWLWYD, SCHEMA, WEBAPP_CONFIG, join(MODULES, 'plugin/libprotocol_oidc.so')]
  .filter((path) => !existsSync(path))
  .map((path) => `no ${path}: Debian's glewlwyd is not installed (apt-get install glewlwyd; CI installs it)`)[0] ?? false

/** The admin account the package's schema creates (init.sqlite3.sql: admin / password). */
const ADMIN = { username: 'admin', password: 'password' }

/** A cookie jar for one origin: name=value pairs from Set-Cookie, sent back on every request. */
class CookieJar {
  readonly #cookies = new Map<string, string>()
  store (response: Response): void {
    for (const line of response.headers.getSetCookie()) {
      const [pair = ''] = line.split(';')
      const at = pair.indexOf('=')
      if (at > 0) this.#cookies.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim())
    }
  }

  header (): string {
    return [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ')
  }
}

/** A request to Glewlwyd with the jar's cookies, never following redirects; keeps the cookies it sets. */
async function request (jar: CookieJar, url: string, init: { method?: string, json?: unknown } = {}): Promise<Response> {
  const headers: Record<string, string> = { cookie: jar.header() }
  if (init.json !== undefined) headers['content-type'] = 'application/json'
  const response = await fetch(url, {
    method: init.method ?? (init.json === undefined ? 'GET' : 'POST'),
    headers,
    body: init.json === undefined ? undefined : JSON.stringify(init.json),
    redirect: 'manual'
  })
  jar.store(response)
  return response
}

/**
 * Glewlwyd's configuration file (libconfig syntax): the folder's database, 127.0.0.1 only, no TLS.
 * No `use_secure_connection` line: Glewlwyd 2.7 takes its mere presence, even `false`, as TLS on
 * and exits for want of a key and certificate ("secure connection is active but certificate is
 * not valid").
 */
function glewlwydConf (dir: string, port: number): string {
  const mime = [['.html', 'text/html'], ['.js', 'application/javascript'], ['.json', 'application/json'],
    ['.css', 'text/css'], ['.png', 'image/png'], ['.ico', 'image/x-icon'], ['.svg', 'image/svg+xml'],
    ['.ttf', 'font/ttf'], ['.woff', 'font/woff'], ['.woff2', 'font/woff2'], ['.eot', 'application/vnd.ms-fontobject']]
  return `port=${port}
bind_address="127.0.0.1"
external_url="http://127.0.0.1:${port}"
login_url="login.html"
api_prefix="api"
static_files_path="${join(dir, 'webapp')}"
log_mode="console"
log_level="INFO"
cookie_secure=0
cookie_same_site="empty"
session_key="GLEWLWYD2_SESSION_ID"
admin_session_authentication="cookie"
login_api_enabled=true
admin_scope="g_admin"
profile_scope="g_profile"
user_module_path="${MODULES}/user"
client_module_path="${MODULES}/client"
user_auth_scheme_module_path="${MODULES}/scheme"
plugin_module_path="${MODULES}/plugin"
hash_algorithm="SHA512"
database = { type = "sqlite3"; path = "${join(dir, 'glewlwyd.db')}"; };
static_files_mime_types = (
${mime.map(([extension, type]) => `  { extension = "${extension}"; mime_type = "${type}"; }`).join(',\n')}
);
`
}

/**
 * Starts Glewlwyd from Debian's package in a fresh temporary folder (configuration, SQLite
 * database from the package's schema, a copy of its web app, nothing else) on a free port of
 * 127.0.0.1, as the current user, then configures it through its admin REST API as the admin
 * account of the schema: the `oidc` plugin (issuer `http://127.0.0.1:<port>/api/oidc`, an RSA
 * key made here, ID tokens RS256, PKCE S256 required, `iss` in the authorization response),
 * scopes `email` and `profile` beside `openid` (all three need the password), one confidential
 * client (client_secret_basic or _post, the one redirect_uri, code flow) and one user.
 *
 * Claims: `sub` is Glewlwyd's public subject identifier (a random string per user, not the
 * username); scope `profile` gives `name`, scope `email` gives `email` and `email_verified`
 * (true: Glewlwyd has no such notion, so it is a user property mapped to a boolean claim).
 * Stopped and removed at teardown.
 */
export async function startDebianProvider (t: Test, opts: { redirectUri: string, user: { username: string, password: string, email: string, name: string } }): Promise<DebianProvider> {
  if (debianProviderMissing !== false) throw new Error(debianProviderMissing)
  const dir = await mkdtemp(join(tmpdir(), 'authgate-glewlwyd-'))
  let output = ''
  let stopped: Promise<void> | undefined
  const started: { child?: ChildProcess } = {}
  const close = async (): Promise<void> => {
    stopped ??= (async () => {
      const { child } = started
      if (child !== undefined && child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit')
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
        await exited
        clearTimeout(timer)
      }
      await rm(dir, { recursive: true, force: true })
    })()
    return stopped
  }
  t.teardown(close)

  // The package's own schema and seed (admin account, scopes g_admin, g_profile and openid,
  // database user and client backends), applied with Node's SQLite.
  const db = new DatabaseSync(join(dir, 'glewlwyd.db'))
  // One transaction: statement by statement, each commit waits for the disk (about 1.7 s).
  db.exec(`BEGIN;\n${gunzipSync(await readFile(SCHEMA)).toString()}\nCOMMIT;`)
  db.close()
  // The web app, copied: Debian's config.json is a symbolic link to a folder in /etc, and
  // Glewlwyd serves only files whose real path lies under static_files_path.
  await cp(WEBAPP, join(dir, 'webapp'), { recursive: true, dereference: true, filter: (source) => source !== join(WEBAPP, 'config.json') })
  await writeFile(join(dir, 'webapp', 'config.json'), await readFile(WEBAPP_CONFIG))

  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  await writeFile(join(dir, 'glewlwyd.conf'), glewlwydConf(dir, port))
  const child = started.child = spawn(GLEWLWYD, ['--config-file', join(dir, 'glewlwyd.conf')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
  const collect = (chunk: Buffer): void => { output += chunk.toString() }
  child.stdout.on('data', collect)
  child.stderr.on('data', collect)
  const exited = once(child, 'exit').then(([code, signal]) => { throw new Error(`glewlwyd exited (${code ?? signal}):\n${output}`) })
  exited.catch(() => {})

  // Ready once it answers GET /config (the web app's first request).
  const deadline = Date.now() + 30_000
  for (;;) {
    const ready = await Promise.race([
      fetch(`${base}/config`).then((response) => response.ok, () => false),
      exited
    ])
    if (ready) break
    if (Date.now() > deadline) throw new Error(`glewlwyd did not answer on ${base} within 30 s:\n${output}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }

  const admin = new CookieJar()
  const api = async (method: string, path: string, json?: unknown): Promise<unknown> => {
    const response = await request(admin, `${base}/api${path}`, { method, json })
    const text = await response.text()
    if (!response.ok) throw new Error(`glewlwyd ${method} /api${path}: ${response.status} ${text}\n${output}`)
    return text === '' ? undefined : JSON.parse(text)
  }
  await api('POST', '/auth/', ADMIN)

  const issuer = `${base}/api/oidc`
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'glewlwyd-test', alg: 'RS256', use: 'sig' }
  await api('POST', '/mod/plugin/', {
    module: 'oidc',
    name: 'oidc',
    display_name: 'OpenID Connect',
    enabled: true,
    parameters: {
      iss: issuer,
      'jwks-private': JSON.stringify({ keys: [jwk] }),
      'default-kid': jwk.kid,
      'jwks-show': true,
      'subject-type': 'public',
      'access-token-duration': 3600,
      'refresh-token-duration': 1209600,
      'code-duration': 600,
      'auth-type-code-enabled': true,
      'auth-type-refresh-enabled': true,
      'pkce-allowed': true,
      'pkce-method-plain-allowed': false,
      'pkce-required': true,
      'oauth-as-iss-id': true,
      'allowed-scope': ['openid', 'email', 'profile'],
      'name-claim': 'on-demand',
      'name-claim-scope': ['profile'],
      'email-claim': 'on-demand',
      'email-claim-scope': ['email'],
      claims: [{ name: 'email_verified', 'user-property': 'email_verified', type: 'boolean', 'boolean-value-true': '1', 'boolean-value-false': '0', scope: ['email'] }]
    }
  })
  for (const name of ['email', 'profile']) {
    await api('POST', '/scope/', { name, display_name: name, description: `OpenID Connect scope ${name}`, password_required: true, password_max_age: 0, scheme: {} })
  }
  await api('PUT', '/scope/openid', { display_name: 'Open ID', description: 'Open ID Connect scope', password_required: true, password_max_age: 0, scheme: {} })

  // The database user backend keeps only the properties its data-format names: add
  // email_verified, then reset the module so that it reads its new parameters.
  const userModule = await api('GET', '/mod/user/database') as { parameters: { 'data-format': Record<string, unknown> } }
  userModule.parameters['data-format'].email_verified = { multiple: false, read: true, write: true, 'profile-read': true, 'profile-write': false }
  await api('PUT', '/mod/user/database', userModule)
  await api('PUT', '/mod/user/database/reset')
  const { user } = opts
  await api('POST', '/user/', { username: user.username, password: user.password, name: user.name, email: user.email, email_verified: '1', scope: ['openid', 'email', 'profile'], enabled: true })

  const clientId = 'authgate'
  const clientSecret = randomBytes(24).toString('base64url')
  await api('POST', '/client/', {
    client_id: clientId,
    name: 'authgate',
    enabled: true,
    confidential: true,
    client_secret: clientSecret,
    redirect_uri: [opts.redirectUri],
    authorization_type: ['code', 'refresh_token'],
    token_endpoint_auth_method: ['client_secret_basic', 'client_secret_post'],
    scope: []
  })

  const discovered = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json() as { issuer: string }

  const authorize = async (authorizationUrl: string, username: string, password: string): Promise<URL> => {
    const jar = new CookieJar()
    let url = new URL(authorizationUrl)
    for (let hops = 0; hops < 10; hops++) {
      if (url.origin !== base) return url
      if (url.pathname === '/login.html') {
        // What the login page does: sign in, grant the scopes it lists, go on to callback_url.
        const signIn = await request(jar, `${base}/api/auth/`, { json: { username, password } })
        if (!signIn.ok) throw new Error(`glewlwyd refused the sign-in of ${username}: ${signIn.status}`)
        const scope = url.searchParams.get('scope') ?? 'openid'
        const client = url.searchParams.get('client_id') ?? ''
        const grant = await request(jar, `${base}/api/auth/grant/${encodeURIComponent(client)}`, { method: 'PUT', json: { scope } })
        if (!grant.ok) throw new Error(`glewlwyd refused the grant of ${scope} to ${client}: ${grant.status} ${await grant.text()}`)
        const callback = url.searchParams.get('callback_url')
        if (callback === null) throw new Error(`no callback_url on the login page: ${url.href}`)
        url = new URL(callback + (callback.includes('?') ? '&g_continue' : '?g_continue'))
        continue
      }
      const response = await request(jar, url.href)
      const location = response.headers.get('location')
      if (response.status < 300 || response.status >= 400 || location === null) {
        throw new Error(`glewlwyd answered ${response.status} without a redirect at ${url.href}: ${await response.text()}`)
      }
      url = new URL(location, url)
    }
    throw new Error(`more than 10 redirects from ${authorizationUrl}`)
  }

  return {
    name: 'glewlwyd',
    issuer: discovered.issuer,
    clientId,
    clientSecret,
    authorize,
    loginPage: `${base}/login.html`,
    output: () => output,
    close
  }
}
