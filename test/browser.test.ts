import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { freshDatabase, serverEnv, uniqueUser } from './helper.ts'
import { servePages } from './local-server.ts'
import { freePort, startServer } from './server-process.ts'
import { startInbox } from './smtp.ts'

// What the pages below define, as page.evaluate sees it (the project's types hold no DOM).
declare const window: {
  api: (method: string, path: string, body?: unknown) => Promise<{ status: number, body: any }>
  attempts: Promise<Array<{ path: string, read?: string, refused?: string }>>
  reset: (password: string) => Promise<{ status: number, body: any }>
}
declare const document: { cookie: string }

// Debian's Chromium itself (its /usr/bin/chromium is a wrapper script); .ci/run installs it.
const CHROMIUM = '/usr/lib/chromium/chromium'
const SCREENSHOTS = join(import.meta.dirname, '..', '.tap', 'screenshots')

// The front end: how a page on another port of the same site calls authgate, with the cookies
// only. `api(method, path, body)` answers { status, body }.
const frontEnd = (auth: string): string => `<!doctype html><meta charset="utf-8"><title>app</title>
<script>
  window.api = async (method, path, body) => {
    const res = await fetch(${JSON.stringify(auth)} + path, {
      method,
      credentials: 'include',
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    const text = await res.text()
    return { status: res.status, body: text === '' ? null : JSON.parse(text) }
  }
</script>`

// The attacker's site: another site altogether (127.0.0.1 is not localhost's site).
const attackerReads = (auth: string): string => `<!doctype html><meta charset="utf-8"><title>evil</title>
<script>
  window.attempts = Promise.all(['/api/detail', '/api/auth/sessions'].map(async (path) => {
    try {
      const res = await fetch(${JSON.stringify(auth)} + path, { credentials: 'include' })
      return { path, read: await res.text() }
    } catch (error) {
      return { path, refused: String(error) }
    }
  }))
</script>`

// The front end's reset page: it reads the token from the fragment (which no request carries),
// takes it out of the address bar and the history, and POSTs it with the new password.
const resetPage = (auth: string): string => `<!doctype html><meta charset="utf-8"><title>reset</title>
<script>
  const token = new URLSearchParams(location.hash.slice(1)).get('token')
  history.replaceState(null, '', location.pathname)
  window.reset = async (password) => {
    const res = await fetch(${JSON.stringify(auth)} + '/api/auth/password/reset', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token, new_password: password })
    })
    const text = await res.text()
    return { status: res.status, body: text === '' ? null : JSON.parse(text) }
  }
</script>`

const attackerForm = (action: string, enctype: string, fields: Record<string, string>): string => `<!doctype html>
<meta charset="utf-8"><title>evil form</title>
<form method="POST" action="${action}" enctype="${enctype}">
${Object.entries(fields).map(([name, value]) => `<input name="${name}" value='${value}'>`).join('\n')}
</form>
<script>document.forms[0].submit()</script>`

t.test('the cookie flow in a real Chromium', { skip: !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM} (Debian's chromium package)` }, async (t) => {
  // The front end is served first: authgate's CORS_ORIGINS names its origin.
  const pages: Record<string, string> = {}
  const appSeen: string[] = []
  const appPort = await servePages(t, pages, appSeen)
  const appOrigin = `http://localhost:${appPort}`
  /** authgate in production mode (cookies Secure), its front end at `path` of the app origin: its base URL. */
  async function startAuthgate (path: string, env: Record<string, string> = {}): Promise<string> {
    // Production wants its public URL, which the docs page's "Try it out" calls: a port known beforehand.
    const port = await freePort()
    const server = startServer(serverEnv(await freshDatabase(t), { NODE_ENV: 'production', CORS_ORIGINS: appOrigin, PORT: String(port), PUBLIC_URL: `http://localhost:${port}`, ...env }))
    t.teardown(() => { server.child.kill('SIGKILL') })
    await server.listening
    const base = `http://localhost:${port}`
    pages[path] = frontEnd(base)
    return base
  }
  // The docs page is off by default in production: an operator turned it on.
  const auth = await startAuthgate('/', { DOCS_ENABLED: 'true' })
  const evilPages: Record<string, string> = { '/read': attackerReads(auth) }
  const evilOrigin = `http://127.0.0.1:${await servePages(t, evilPages)}`

  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, headless: true })
  t.teardown(() => browser.close())

  /** A fresh browser profile with a user signed in on the front end at `path`. */
  async function signedIn (t: Test, path = '/'): Promise<{ context: BrowserContext, page: Page, user: ReturnType<typeof uniqueUser> }> {
    const context = await browser.newContext()
    t.teardown(() => context.close())
    const page = await context.newPage()
    await page.goto(appOrigin + path)
    const user = uniqueUser()
    t.match(await page.evaluate((u) => window.api('POST', '/api/auth/register', u), user), { status: 201 })
    const login = await page.evaluate((u) => window.api('POST', '/api/auth/login', { identifier: u.username, password: u.password }), user)
    t.equal(login.status, 200, 'signed in from the front end')
    return { context, page, user }
  }
  // Every cookie of authgate's host, whatever its path.
  const authCookies = async (context: BrowserContext) => (await context.cookies()).filter((c) => c.domain === 'localhost').sort((a, b) => a.name.localeCompare(b.name))

  t.test('sign in, read, refresh and sign out with the cookies alone', async (t) => {
    const { context, page } = await signedIn(t)
    const cookies = await authCookies(context)
    t.same(cookies.map((c) => [c.name, c.path, c.httpOnly, c.secure, c.sameSite]), [
      ['__Host-access_token', '/', true, true, 'Lax'],
      ['__Host-refresh_binding', '/', true, true, 'Lax'],
      ['__Secure-refresh_token', '/api/token', true, true, 'Lax']
    ], 'HttpOnly, Secure, SameSite=Lax, the prefixes of COOKIE_SECURE')
    t.equal(await page.evaluate(() => document.cookie), '', 'document.cookie shows no token')

    // What the browser sends: the refresh cookie to the token endpoints only. By method and path:
    // the cross-origin POST's preflight (OPTIONS, no cookies) goes to the same path. The headers
    // of each request are read asynchronously: all of them are awaited before they are looked at.
    const sent: Record<string, string> = {}
    const reading: Array<Promise<void>> = []
    page.on('request', (request) => {
      reading.push(request.allHeaders().then((headers) => { sent[`${request.method()} ${new URL(request.url()).pathname}`] = headers.cookie ?? '' }))
    })
    const detail = await page.evaluate(() => window.api('GET', '/api/detail'))
    t.equal(detail.status, 200)
    t.match(detail.body, { message: 'Welcome to Page' })
    const refreshed = await page.evaluate(() => window.api('POST', '/api/token/refresh', {}))
    t.equal(refreshed.status, 200, 'refreshed through the refresh cookie')
    await Promise.all(reading)
    t.match(sent['GET /api/detail'], /__Host-access_token=/)
    t.notMatch(sent['GET /api/detail'], /refresh_token/, 'the refresh cookie is not sent to /api/detail')
    t.match(sent['POST /api/token/refresh'], /__Secure-refresh_token=/, 'it is sent to /api/token/refresh')
    const rotated = await authCookies(context)
    t.not(rotated[2]!.value, cookies[2]!.value, 'the refresh cookie was rotated')
    t.equal((await page.evaluate(() => window.api('GET', '/api/detail'))).status, 200, 'the new access cookie works')

    t.equal((await page.evaluate(() => window.api('POST', '/api/auth/logout', {}))).status, 204)
    t.same(await authCookies(context), [], 'the cookies are gone')
    const after = await page.evaluate(() => window.api('GET', '/api/detail'))
    t.equal(after.status, 401)
    t.match(after.body, { code: 'not_authenticated' })
  })

  t.test('an attacker page on another site can read nothing and change nothing', async (t) => {
    const { context, page, user } = await signedIn(t)
    const before = await authCookies(context)
    const evil = await context.newPage()

    await evil.goto(`${evilOrigin}/read`)
    const attempts = await evil.evaluate(() => window.attempts)
    for (const attempt of attempts) t.match(attempt, { refused: /TypeError/ }, `cannot read ${attempt.path}`)

    // Forms need no preflight: text/plain and urlencoded POSTs to the state-changing endpoints.
    const forms: Array<[string, string, Record<string, string>]> = [
      ['/api/auth/logout', 'text/plain', { '{"a":"': '"}' }],
      ['/api/auth/logout?scope=global', 'application/x-www-form-urlencoded', { x: '1' }],
      ['/api/token/refresh', 'text/plain', { '{"refresh":"': '"}' }],
      ['/api/token/blacklist', 'application/x-www-form-urlencoded', { refresh: 'x' }],
      ['/api/auth/password', 'text/plain', { '{"current_password":"': `${user.password}","new_password":"attacker chosen password"}` }]
    ]
    for (const [path, enctype, fields] of forms) {
      evilPages['/form'] = attackerForm(auth + path, enctype, fields)
      const [response] = await Promise.all([evil.waitForResponse((res) => res.url().startsWith(auth + path.split('?')[0])), evil.goto(`${evilOrigin}/form`)])
      t.equal(response.status(), 415, `${enctype} POST ${path}: 415`)
    }

    t.same(await authCookies(context), before, 'the cookies are as they were')
    // SameSite=Lax: a link from another site is a top-level GET, which carries the access
    // cookie; its answer goes to the user's tab, never to the page that linked.
    evilPages['/link'] = `<a href="${auth}/api/detail">prize</a>`
    await evil.goto(`${evilOrigin}/link`)
    const [followed] = await Promise.all([evil.waitForResponse(`${auth}/api/detail`), evil.click('a')])
    t.equal(followed.status(), 200, 'Lax: a cross-site link is signed in')
    t.equal((await page.evaluate(() => window.api('GET', '/api/detail'))).status, 200, 'still signed in')
    const sessions = await page.evaluate(() => window.api('GET', '/api/auth/sessions'))
    t.equal(sessions.body.sessions.length, 1, 'the session stands')
    const again = await page.evaluate((u) => window.api('POST', '/api/auth/login', { identifier: u.username, password: u.password }), user)
    t.equal(again.status, 200, 'the password is unchanged')
  })

  t.test('a reset link from the mail, followed in Chromium to a page that POSTs its fragment', async (t) => {
    const inbox = await startInbox(t)
    const resetUrl = `${appOrigin}/reset-password`
    const mailing = await startAuthgate('/mail', { SMTP_URL: inbox.url, APP_RESET_URL: resetUrl })
    pages['/reset-password'] = resetPage(mailing)
    const { context, page, user } = await signedIn(t, '/mail')
    t.equal((await page.evaluate((email) => window.api('POST', '/api/auth/password/forgot', { email }), user.email)).status, 202)
    const link = /(http:\/\/\S+#token=[A-Za-z0-9_-]{43})/.exec((await inbox.next()).text ?? '')![1]!
    t.ok(link.startsWith(`${resetUrl}#token=`), 'the mail links to APP_RESET_URL, the token in the fragment')

    appSeen.length = 0
    const tab = await context.newPage()
    await tab.goto(link)
    t.equal(tab.url(), resetUrl, 'the page took the token out of the address bar')
    const newPassword = 'a passphrase chosen in the browser'
    t.same(await tab.evaluate((password) => window.reset(password), newPassword), { status: 204, body: null }, 'the POST of the fragment\'s token set the password')
    t.same(appSeen, ['/reset-password'], 'the front end\'s server never saw the token')
    t.equal((await tab.evaluate((password) => window.reset(password), newPassword)).status, 400, 'the token is spent')

    t.equal((await page.evaluate(() => window.api('GET', '/api/detail'))).status, 401, 'the session the browser had is over')
    const old = await page.evaluate((u) => window.api('POST', '/api/auth/login', { identifier: u.username, password: u.password }), user)
    t.equal(old.status, 401, 'the old password no longer signs in')
    const fresh = await page.evaluate((u) => window.api('POST', '/api/auth/login', { identifier: u.username, password: u.password }), { ...user, password: newPassword })
    t.equal(fresh.status, 200, 'the new one does')
  })

  t.test('COOKIE_SAMESITE=strict is what the browser enforces', async (t) => {
    const strict = await startAuthgate('/strict', { COOKIE_SAMESITE: 'strict' })
    const { context, page } = await signedIn(t, '/strict')
    t.same((await authCookies(context)).map((c) => [c.name, c.secure, c.sameSite]), [
      ['__Host-access_token', true, 'Strict'],
      ['__Host-refresh_binding', true, 'Strict'],
      ['__Secure-refresh_token', true, 'Strict']
    ])
    t.equal((await page.evaluate(() => window.api('GET', '/api/detail'))).status, 200, 'the front end is same-site: signed in')
    const evil = await context.newPage()
    evilPages['/link'] = `<a href="${strict}/api/detail">prize</a>`
    await evil.goto(`${evilOrigin}/link`)
    const [followed] = await Promise.all([evil.waitForResponse(`${strict}/api/detail`), evil.click('a')])
    t.equal(followed.status(), 401, 'Strict: a cross-site link carries no cookie')
  })

  t.test('cookie tossing from a sibling subdomain never signs the browser in as the attacker', async (t) => {
    // Three hosts of one site, as app.example.com, evil.example.com (a subdomain the attacker
    // controls) and auth.example.com would be: Chromium takes *.localhost as loopback and as a
    // secure context, so Secure cookies and their prefixes hold over http.
    const site = 'authgate.localhost'
    const sitePages: Record<string, string> = {}
    const pagesPort = await servePages(t, sitePages)
    const app = `http://app.${site}:${pagesPort}`
    const server = startServer(serverEnv(await freshDatabase(t), { NODE_ENV: 'production', CORS_ORIGINS: app }))
    t.teardown(() => { server.child.kill('SIGKILL') })
    const direct = await server.listening
    const tossed = direct.replace('127.0.0.1', `auth.${site}`)
    sitePages['/'] = frontEnd(tossed)

    // The attacker's own session, whose refresh token the attacker plants in the victim's browser.
    const attacker = uniqueUser('attacker')
    await fetch(`${direct}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(attacker) })
    const { refresh } = await (await fetch(`${direct}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ identifier: attacker.username, password: attacker.password }) })).json() as { refresh: string }
    // A longer path than ours, for the whole site: the browser sends it first.
    sitePages['/plant'] = `<!doctype html><script>document.cookie = "__Secure-refresh_token=${refresh}; Domain=${site}; Path=/api/token/refresh; Secure; SameSite=Lax"</script>`

    const context = await browser.newContext()
    t.teardown(() => context.close())
    const page = await context.newPage()
    await page.goto(`${app}/`)
    const victim = uniqueUser('victim')
    t.equal((await page.evaluate((u) => window.api('POST', '/api/auth/register', u), victim)).status, 201)
    const signIn = async (): Promise<void> => {
      t.equal((await page.evaluate((u) => window.api('POST', '/api/auth/login', { identifier: u.username, password: u.password }), victim)).status, 200)
    }
    const plant = async (): Promise<void> => {
      const evil = await context.newPage()
      await evil.goto(`http://evil.${site}:${pagesPort}/plant`)
      await evil.close()
      t.ok((await context.cookies()).some((c) => c.domain === `.${site}` && c.value === refresh), 'the attacker\'s cookie is planted for the whole site')
    }
    const whoIs = async (): Promise<string | undefined> => (await page.evaluate(() => window.api('GET', '/api/detail'))).body?.user?.username

    await signIn()
    await plant()
    const first = await page.evaluate(() => window.api('POST', '/api/token/refresh', {}))
    t.equal(first.status, 401, 'both refresh cookies arrive: neither is taken')
    t.same((await context.cookies()).filter((c) => c.domain.endsWith(site)).map((c) => c.name), [], 'Clear-Site-Data: every cookie of the site is gone, the planted one too')

    // A browser that drops only the cookies the 401 clears (as before Clear-Site-Data): the
    // planted cookie then arrives alone, beside the victim's binding.
    await signIn()
    await plant()
    await context.clearCookies({ name: '__Secure-refresh_token', domain: `auth.${site}` })
    const second = await page.evaluate(() => window.api('POST', '/api/token/refresh', {}))
    t.equal(second.status, 401, 'the planted cookie alone is refused: it is not bound to this browser')
    t.not(await whoIs(), attacker.username, 'never signed in as the attacker')
    await signIn()
    t.equal(await whoIs(), victim.username, 'the victim signs in again as ever')
  })

  t.test('the docs page renders every endpoint, and its "Try it out" signs in', async (t) => {
    const { context, user } = await signedIn(t)
    const page = await context.newPage()
    const errors: string[] = []
    page.on('pageerror', (error) => errors.push(error.message))
    page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
    await page.goto(`${auth}/docs`)
    await page.locator('.opblock').first().waitFor()
    const spec = await (await fetch(`${auth}/docs/json`)).json() as { paths: Record<string, Record<string, unknown>> }
    const operations = Object.values(spec.paths).reduce((n, item) => n + Object.keys(item).length, 0)
    t.equal(await page.locator('.opblock').count(), operations, `all ${operations} operations listed`)
    t.equal(await page.evaluate(() => document.cookie), '', 'no token for the docs page either')

    const login = page.locator('.opblock-post', { has: page.locator('[data-path="/api/auth/login"]') })
    await login.locator('.opblock-summary').click()
    await login.getByRole('button', { name: 'Try it out' }).click()
    await login.locator('textarea.body-param__text').fill(JSON.stringify({ identifier: user.username, password: user.password }))
    const [response] = await Promise.all([
      page.waitForResponse((res) => res.url() === `${auth}/api/auth/login` && res.request().method() === 'POST'),
      login.getByRole('button', { name: 'Execute' }).click()
    ])
    t.equal(response.status(), 200, '"Try it out" on POST /api/auth/login')
    const status = login.locator('.live-responses-table tbody .response-col_status').first()
    await status.waitFor()
    t.match(await status.innerText(), /^200/, 'the UI shows the 200')
    await mkdir(SCREENSHOTS, { recursive: true })
    await page.screenshot({ path: join(SCREENSHOTS, 'docs.png'), fullPage: true })
    t.same(errors, [], 'no script or CSP errors')
  })
})
