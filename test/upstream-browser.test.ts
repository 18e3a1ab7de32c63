import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { freshDatabase, serverEnv } from './helper.ts'
import { debianProviderMissing, signInOnGlewlwydPages, startDebianProvider } from './idp-debian.ts'
import { startOidcProvider } from './oidc-provider.ts'
import { servePages } from './local-server.ts'
import { freePort, startServer } from './server-process.ts'

// The whole browser flow of an upstream sign-in in a real Chromium: a front end on one port,
// authgate (a `node src/server.ts` process) on another, the identity provider on a third:
// panva's oidc-provider (test/oidc-provider.ts) and, when Debian's package is installed,
// Glewlwyd with its own login page (test/idp-debian.ts).

// What the pages below define, as page.evaluate sees it (the project's types hold no DOM).
declare const document: { cookie: string }

// Debian's Chromium itself (its /usr/bin/chromium is a wrapper script), as test/browser.test.ts.
const CHROMIUM = '/usr/lib/chromium/chromium'
const ada = { username: 'ada', password: 'correct horse battery staple', email: 'ada@example.test', name: 'Ada Lovelace' }

// The front end: links that start a sign-in, and the page they come back to, which says what
// the fragment says (an error) or asks authgate who signed in, with the cookies only.
const home = (auth: string, returnTo: string, providers: string[]): string => `<!doctype html><meta charset="utf-8"><title>app</title>
${providers.map((name) => `<p><a href="${auth}/api/auth/oidc/${name}/start?return_to=${encodeURIComponent(returnTo)}">Sign in with ${name === 'corp' ? 'Corp' : 'Glewlwyd'}</a></p>`).join('\n')}`

const signedIn = (auth: string): string => `<!doctype html><meta charset="utf-8"><title>signed in</title>
<p id="out"></p>
<script>
  const out = document.getElementById('out')
  const said = new URLSearchParams(location.hash.slice(1))
  if (said.has('error')) {
    out.textContent = 'error: ' + said.get('error')
  } else {
    fetch(${JSON.stringify(auth)} + '/api/detail', { credentials: 'include' })
      .then(async (res) => {
        const body = await res.json()
        out.textContent = res.ok ? 'signed in as ' + body.user.username + ' <' + body.user.email + '>' : 'not signed in: ' + res.status
      })
      .catch((error) => { out.textContent = 'failed: ' + error })
  }
</script>`

t.test('an upstream sign-in in a real Chromium, from a front end on another port', { skip: !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM} (Debian's chromium package)` }, async (t) => {
  // The providers want authgate's redirect_uri before they start, authgate their issuers: its port is chosen first.
  const authPort = await freePort()
  const auth = `http://localhost:${authPort}`
  const pages: Record<string, string> = {}
  const seen: string[] = []
  const app = `http://localhost:${await servePages(t, pages, seen)}`
  const returnTo = `${app}/signed-in`

  const corpSecret = randomBytes(24).toString('base64url')
  const op = await startOidcProvider(t, {
    clients: [{ client_id: 'authgate', client_secret: corpSecret, redirect_uris: [`${auth}/api/auth/oidc/corp/callback`] }],
    accounts: {
      alice: { email: 'alice@corp.test', email_verified: true, name: 'Alice', preferred_username: 'alice' },
      bob: { email: 'bob@corp.test', email_verified: true, preferred_username: 'bob' }
    }
  })
  const glew = debianProviderMissing === false ? await startDebianProvider(t, { redirectUri: `${auth}/api/auth/oidc/glew/callback`, user: ada }) : undefined
  const providers = glew === undefined ? ['corp'] : ['corp', 'glew']

  const server = startServer(serverEnv(await freshDatabase(t), {
    NODE_ENV: 'production',
    PORT: String(authPort),
    PUBLIC_URL: auth,
    // Plain http: cookies without Secure, and without their prefixes.
    COOKIE_SECURE: 'false',
    CORS_ORIGINS: app,
    OIDC_PROVIDERS: providers.join(','),
    OIDC_CORP_ISSUER: op.issuer,
    OIDC_CORP_CLIENT_ID: 'authgate',
    OIDC_CORP_CLIENT_SECRET: corpSecret,
    OIDC_CORP_TRUST_EMAIL: 'true',
    ...glew === undefined
      ? {}
      : { OIDC_GLEW_ISSUER: glew.issuer, OIDC_GLEW_CLIENT_ID: glew.clientId, OIDC_GLEW_CLIENT_SECRET: glew.clientSecret, OIDC_GLEW_TRUST_EMAIL: 'true' },
    OIDC_RETURN_URLS: returnTo
  }))
  t.teardown(async () => { await server.stop() })
  await server.listening.catch((error: Error) => { throw new Error(`${error.message}\n${server.output()}`) })
  pages['/'] = home(auth, returnTo, providers)
  pages['/signed-in'] = signedIn(auth)

  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, headless: true })
  t.teardown(() => browser.close())

  /** A fresh browser profile on the front end's home page. */
  async function visitor (t: Test): Promise<{ context: BrowserContext, page: Page }> {
    const context = await browser.newContext()
    t.teardown(() => context.close())
    const page = await context.newPage()
    await page.goto(`${app}/`)
    return { context, page }
  }
  /** What the page ends up saying, once it said anything. */
  const saying = async (page: Page): Promise<string> => {
    await page.waitForSelector('#out:not(:empty)')
    return await page.locator('#out').innerText()
  }
  // authgate's cookies in the browser (a host's cookies are shared by its ports: the front end's too).
  // (Every path: context.cookies(url) leaves out the refresh cookie's /api/token.)
  const cookiesOf = async (context: BrowserContext) => (await context.cookies()).filter((c) => c.domain === 'localhost').sort((a, b) => a.name.localeCompare(b.name))
  /** The front end's pages the browser asked for since `seen` was emptied, its favicon aside. */
  const pagesSeen = (): string[] => seen.filter((url) => url !== '/favicon.ico')

  t.test('Sign in with Corp: the provider\'s login form, back on the front end signed in', async (t) => {
    const { context, page } = await visitor(t)
    seen.length = 0
    await page.getByRole('link', { name: 'Sign in with Corp' }).click()
    await page.waitForURL(`${op.url}/**`)
    const during = await cookiesOf(context)
    t.same(during.map((c) => [c.name, c.path, c.httpOnly, c.sameSite]), [['upstream_flow', '/', true, 'Lax']], 'the flow cookie, HttpOnly, while at the provider')

    await page.fill('input[name="login"]', 'alice')
    await page.getByRole('button', { name: 'Sign in' }).click()
    await page.waitForURL(`${returnTo}**`)
    t.equal(await saying(page), 'signed in as alice <alice@corp.test>', 'the page read /api/detail with the cookies')
    const landed = new URL(page.url())
    t.equal(landed.href, returnTo, 'the final URL: no query, no fragment')
    t.same(pagesSeen(), ['/signed-in'], 'the front end\'s server saw no code, state or token')

    const cookies = await cookiesOf(context)
    t.same(cookies.map((c) => c.name), ['access_token', 'refresh_binding', 'refresh_token'], 'signed in; the flow cookie is gone')
    t.ok(cookies.every((c) => c.httpOnly), 'every cookie HttpOnly')
    t.ok(cookies.every((c) => !c.secure), 'COOKIE_SECURE=false: not Secure')
    t.equal(await page.evaluate(() => document.cookie), '', 'the front end\'s script reads no cookie')

    // Back to the provider, signed in there: straight back, signed in again as the same user.
    await page.goto(`${app}/`)
    await page.getByRole('link', { name: 'Sign in with Corp' }).click()
    await page.waitForURL(`${returnTo}**`)
    t.equal(await saying(page), 'signed in as alice <alice@corp.test>')
  })

  t.test('an address that has an account already: back on the front end with #error=account_exists', async (t) => {
    const registered = await fetch(`${auth}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'bob-local', email: 'bob@corp.test', password: 'a long local password' })
    })
    t.equal(registered.status, 201)
    const { context, page } = await visitor(t)
    seen.length = 0
    await page.getByRole('link', { name: 'Sign in with Corp' }).click()
    await page.fill('input[name="login"]', 'bob')
    await page.getByRole('button', { name: 'Sign in' }).click()
    await page.waitForURL(`${returnTo}**`)
    t.equal(await saying(page), 'error: account_exists', 'the page shows what the fragment says')
    t.equal(page.url(), `${returnTo}#error=account_exists`)
    t.same(pagesSeen(), ['/signed-in'], 'the fragment never reached the front end\'s server')
    t.same(await cookiesOf(context), [], 'no cookie: not signed in, the flow cookie gone')
  })

  t.test('Sign in with Glewlwyd: its own login and consent pages', { skip: debianProviderMissing }, async (t) => {
    const { context, page } = await visitor(t)
    seen.length = 0
    await page.getByRole('link', { name: 'Sign in with Glewlwyd' }).click()
    await page.waitForURL('**/login.html?**')
    await signInOnGlewlwydPages(page, ada)
    await page.waitForURL(`${returnTo}**`)
    t.equal(await saying(page), `signed in as ada <${ada.email}>`)
    t.equal(page.url(), returnTo, 'no query, no fragment')
    t.same(pagesSeen(), ['/signed-in'])
    const cookies = await cookiesOf(context)
    t.same(cookies.map((c) => c.name), ['access_token', 'refresh_binding', 'refresh_token'], 'signed in; the flow cookie is gone')
    t.ok(cookies.every((c) => c.httpOnly), 'every cookie HttpOnly')
  })
})
