import { execFile } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { generateSync } from 'otplib'
import { chromium, type Browser, type CDPSession, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { basic, bearer, claimsOf, eventually, freshDatabase, serverEnv, uniqueUser } from './helper.ts'
import { servePages } from './local-server.ts'
import { freePort, startServer } from './server-process.ts'

// Passkeys in a real Chromium: its DevTools virtual authenticators (CDP's WebAuthn domain) in
// place of a device, the front end's code the ```js blocks of docs/passkeys.md (so the docs run
// as written), @simplewebauthn/browser's ES modules served by the front end's page server, and
// authgate a `node src/server.ts` process on another port.

/** What a page's function answered, or what it threw: an authgate refusal's status and code, a browser's error name. */
interface Outcome { answer?: any, status?: number, code?: string, detail?: string, name?: string }
// What the page below defines, as page.evaluate sees it (the project's types hold no DOM).
declare const window: Record<string, (...args: any[]) => Promise<any>> & { ready?: boolean }

const CHROMIUM = '/usr/lib/chromium/chromium'
const ROOT = join(import.meta.dirname, '..')
const LIBRARY = join(ROOT, 'node_modules', '@simplewebauthn', 'browser', 'esm')
const run = promisify(execFile)

/** The front-end code of docs/passkeys.md: its ```js blocks marked `// passkeys.md: <name>`, by name. */
function docsCode (): Map<string, string> {
  const doc = readFileSync(join(ROOT, 'docs', 'passkeys.md'), 'utf8')
  return new Map([...doc.matchAll(/```js\n\/\/ passkeys\.md: ([a-z ]+)\n([\s\S]*?)```/g)].map(([, name, code]) => [name!, code!]))
}

/**
 * The front end: the docs' code in a module (the bare specifier of its import mapped to the
 * library's files on this server), its functions and the library's put on `window` for the test.
 */
function frontEnd (auth: string): string {
  const blocks = docsCode()
  const code = [...blocks.values()].join('\n')
  // The one line a front end changes: where authgate is.
  const placed = code.replace('const AUTHGATE = \'https://auth.example.com\'', `const AUTHGATE = ${JSON.stringify(auth)}`)
  if (placed === code) throw new Error('docs/passkeys.md: no `const AUTHGATE = \'https://auth.example.com\'` line')
  return `<!doctype html><meta charset="utf-8"><title>app</title>
<input name="username" autocomplete="username webauthn">
<script type="importmap">{"imports": {"@simplewebauthn/browser": "/simplewebauthn/index.js"}}</script>
<script type="module">
${placed}
Object.assign(window, { call, addPasskey, listPasskeys, renamePasskey, removePasskey, signInWithPasskey, signInWithPassword, offerPasskeysInAutofill, startAuthentication, startRegistration })
window.ready = true
</script>`
}

/** The claims of the access token a sign-in in the page answered; none, and a failure that shows what it threw, when it did not sign in. */
function signedInAs (t: Test, outcome: Outcome): Record<string, unknown> {
  if (typeof outcome.answer?.access === 'string') return claimsOf(outcome.answer.access)
  t.fail(`not signed in: ${JSON.stringify(outcome)}`)
  return {}
}

/** The flags byte of a WebAuthn answer's authenticator data (base64url): UP is 0x01, UV 0x04. */
const flagsOf = (authenticatorData: string): number => Buffer.from(authenticatorData, 'base64url')[32]!
const UP = 0x01
const UV = 0x04

t.test('passkeys in a real Chromium, the front end of docs/passkeys.md', { skip: !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM} (Debian's chromium package)` }, async (t) => {
  t.same([...docsCode().keys()], ['setup', 'register', 'sign in', 'second step', 'manage', 'autofill'], 'docs/passkeys.md has the blocks the page runs')

  // The front end on one origin; "another site" on a second one, which CORS_ORIGINS lets call
  // authgate but WEBAUTHN_ORIGINS does not list (a page of the same RP id, localhost).
  const pages: Record<string, string> = {}
  for (const file of readdirSync(LIBRARY, { recursive: true, encoding: 'utf8' })) {
    if (file.endsWith('.js')) pages[`/simplewebauthn/${file}`] = readFileSync(join(LIBRARY, file), 'utf8')
  }
  const app = `http://localhost:${await servePages(t, pages)}`
  const other = `http://localhost:${await servePages(t, pages)}`

  // Production mode: PUBLIC_URL is the admin API's audience, so the port is chosen first.
  const authPort = await freePort()
  const auth = `http://localhost:${authPort}`
  const env = serverEnv(await freshDatabase(t), {
    NODE_ENV: 'production',
    PORT: String(authPort),
    PUBLIC_URL: auth,
    CORS_ORIGINS: `${app},${other}`,
    WEBAUTHN_RP_ID: 'localhost',
    WEBAUTHN_ORIGINS: app
  })
  const server = startServer(env)
  t.teardown(async () => { await server.stop() })
  await server.listening.catch((error: Error) => { throw new Error(`${error.message}\n${server.output()}`) })
  pages['/'] = frontEnd(auth)

  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, headless: true })
  t.teardown(() => browser.close())

  /** A fresh browser profile on the front end, and the DevTools session of its tab (WebAuthn on). */
  async function visitor (t: Test): Promise<{ page: Page, cdp: CDPSession }> {
    const context = await browser.newContext()
    t.teardown(() => context.close())
    const page = await context.newPage()
    const cdp = await context.newCDPSession(page)
    await cdp.send('WebAuthn.enable')
    await open(page, app)
    return { page, cdp }
  }
  /** `page` on `origin`'s front end, its module run. */
  async function open (page: Page, origin: string): Promise<void> {
    await page.goto(`${origin}/`)
    await page.waitForFunction(() => window.ready === true)
  }
  /**
   * A virtual authenticator in the tab, as a phone's or a laptop's built-in one: discoverable
   * credentials, user verification (a PIN, a biometric) that passes unless `verifies` is false,
   * presence tested without a click; `synced`, one whose passkeys are backed up. Its id.
   */
  async function device (cdp: CDPSession, { verifies = true, synced = false } = {}): Promise<string> {
    const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: {
        protocol: 'ctap2',
        transport: 'internal',
        hasResidentKey: true,
        hasUserVerification: verifies,
        isUserVerified: verifies,
        automaticPresenceSimulation: true,
        // A password manager's or a platform account's: its passkeys backed up (BE and BS set).
        defaultBackupEligibility: synced,
        defaultBackupState: synced
      }
    })
    return authenticatorId
  }
  /** Runs the page's function `name` with `args`: what it answered or threw. */
  const inPage = (page: Page, name: string, ...args: unknown[]): Promise<Outcome> =>
    page.evaluate(async ([name, args]) => {
      try {
        return { answer: await window[name as string]!(...args as unknown[]) }
      } catch (error: any) {
        return { status: error.status, code: error.code, detail: error.message, name: error.name }
      }
    }, [name, args] as const)
  /** GET `path` from the page, with the cookies only. */
  const read = (page: Page, path: string): Promise<{ status: number, body: any }> =>
    page.evaluate(async (url) => {
      const res = await fetch(url, { credentials: 'include' })
      return { status: res.status, body: await res.json() }
    }, auth + path)
  /** A new account, signed in by its password in the page: its id, name and password. */
  async function signedUp (t: Test, page: Page): Promise<{ id: number, username: string, password: string }> {
    const user = uniqueUser('pk')
    const registered = await inPage(page, 'call', '/api/auth/register', user)
    const id = registered.answer?.user?.id as number
    t.ok(id > 0, 'registered')
    const login = await inPage(page, 'signInWithPassword', user.username, user.password)
    t.ok(typeof login.answer?.access === 'string', 'signed in by password in the page')
    return { id, username: user.username, password: user.password }
  }
  /** The passkeys of the page's signed-in user. */
  const passkeysOf = async (page: Page) => (await read(page, '/api/auth/passkeys')).body.passkeys as Array<{ id: string, name: string, device_type: string, backed_up: boolean, last_used_at: string | null }>

  t.test('two passkeys on two devices: each signs in, with the one user handle of the account', async (t) => {
    const { page, cdp } = await visitor(t)
    const user = await signedUp(t, page)
    const laptop = await device(cdp)
    const first = await inPage(page, 'addPasskey', 'laptop')
    t.match(first, { answer: /^[0-9a-f-]{36}$/ }, 'the laptop\'s passkey is added')
    // Another passkey wants an aal2 session now: the password's is aal1, the passkey's aal2.
    t.match(await inPage(page, 'addPasskey', 'phone'), { status: 403, code: 'aal2_required' }, 'the password session cannot add a second one')
    t.equal(signedInAs(t, await inPage(page, 'signInWithPasskey')).aal, 'aal2', 'signed in by the laptop\'s passkey')
    const again = await inPage(page, 'addPasskey', 'laptop again')
    t.match(again, { name: 'InvalidStateError', code: 'ERROR_AUTHENTICATOR_PREVIOUSLY_REGISTERED' }, 'the same device is not asked again: excludeCredentials names its passkey')
    const [laptopKey] = (await cdp.send('WebAuthn.getCredentials', { authenticatorId: laptop })).credentials
    // One device in the tab at a time: the phone, then the laptop back (its passkey with it).
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: laptop })
    const phone = await device(cdp)
    const second = await inPage(page, 'addPasskey', 'phone')
    t.match(second, { answer: /^[0-9a-f-]{36}$/ }, 'the phone\'s passkey is added')
    const [phoneKey] = (await cdp.send('WebAuthn.getCredentials', { authenticatorId: phone })).credentials
    t.ok(laptopKey!.isResidentCredential && phoneKey!.isResidentCredential, 'both are discoverable')
    t.equal(phoneKey!.userHandle, laptopKey!.userHandle, 'both keep the account\'s one user handle: the second did not replace the first')
    t.same((await passkeysOf(page)).map((p) => p.name), ['laptop', 'phone'])

    t.equal((await inPage(page, 'call', '/api/auth/logout')).answer, null, 'signed out')
    const byPhone = await inPage(page, 'signInWithPasskey')
    t.equal(signedInAs(t, byPhone).sub, String(user.id), 'the phone signs in')
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: phone })
    await cdp.send('WebAuthn.addCredential', { authenticatorId: await device(cdp), credential: laptopKey! })
    const byLaptop = await inPage(page, 'signInWithPasskey')
    t.equal(signedInAs(t, byLaptop).sub, String(user.id), 'the laptop signs in')
    t.ok((await passkeysOf(page)).every((p) => p.last_used_at !== null), 'each passkey was used')
  })

  t.test('a sign-in without a password or a username; the page reads /api/detail with its cookies', async (t) => {
    const { page, cdp } = await visitor(t)
    const user = await signedUp(t, page)
    const authenticatorId = await device(cdp)
    t.match(await inPage(page, 'addPasskey'), { answer: /^[0-9a-f-]{36}$/ })
    await inPage(page, 'call', '/api/auth/logout')
    t.equal((await read(page, '/api/detail')).status, 401, 'signed out')

    const signedIn = await inPage(page, 'signInWithPasskey')
    const claims = signedInAs(t, signedIn)
    t.match(claims, { sub: String(user.id), aal: 'aal2' }, 'aal2 by the passkey alone')
    t.same(claims.amr, ['hwk', 'user', 'mfa'], 'a device-bound key that verified its user')
    const detail = await read(page, '/api/detail')
    t.equal(detail.status, 200, 'the cookies are set')
    t.equal(detail.body.user.username, user.username)
    const [key] = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials
    t.ok(key!.signCount > 0, 'the device counts its signatures')
  })

  t.test('a synced passkey (backed up): amr swk, device_type multiDevice', async (t) => {
    const { page, cdp } = await visitor(t)
    await signedUp(t, page)
    await device(cdp, { synced: true })
    t.match(await inPage(page, 'addPasskey', 'password manager'), { answer: /^[0-9a-f-]{36}$/ })
    t.match(await passkeysOf(page), [{ name: 'password manager', device_type: 'multiDevice', backed_up: true }])
    const claims = signedInAs(t, await inPage(page, 'signInWithPasskey'))
    t.equal(claims.aal, 'aal2')
    t.same(claims.amr, ['swk', 'user', 'mfa'], 'a software key that verified its user')
  })

  t.test('autofill (conditional UI): the same options, from the username field', async (t) => {
    const { page, cdp } = await visitor(t)
    const user = await signedUp(t, page)
    await device(cdp)
    t.match(await inPage(page, 'addPasskey'), { answer: /^[0-9a-f-]{36}$/ })
    await inPage(page, 'call', '/api/auth/logout')
    // The virtual authenticator answers a conditional request by itself: no list to pick from.
    const signedIn = await inPage(page, 'offerPasskeysInAutofill')
    t.match(signedInAs(t, signedIn), { sub: String(user.id), aal: 'aal2' }, 'signed in through the autofill\'s ceremony')
    t.equal((await read(page, '/api/detail')).status, 200, 'the cookies are set')
  })

  t.test('the page lists, renames and removes its passkeys (PATCH and DELETE across origins)', async (t) => {
    const { page, cdp } = await visitor(t)
    await signedUp(t, page)
    await device(cdp)
    const id = (await inPage(page, 'addPasskey', 'laptop')).answer as string
    t.match(await inPage(page, 'listPasskeys'), { answer: [{ id, name: 'laptop' }] })
    t.same(await inPage(page, 'renamePasskey', id, 'work laptop'), { answer: null }, 'renamed: CORS lets the front end PATCH')
    t.match(await inPage(page, 'listPasskeys'), { answer: [{ id, name: 'work laptop' }] })
    t.match(await inPage(page, 'removePasskey', id), { status: 403, code: 'aal2_required' }, 'the password session cannot remove it')
    signedInAs(t, await inPage(page, 'signInWithPasskey'))
    t.same(await inPage(page, 'removePasskey', id), { answer: null }, 'removed from the passkey\'s session')
    t.same(await inPage(page, 'listPasskeys'), { answer: [] })
  })

  t.test('a user with TOTP: a password sign-in in the page, the second step by the passkey', async (t) => {
    const { page, cdp } = await visitor(t)
    const user = await signedUp(t, page)
    await device(cdp)
    t.match(await inPage(page, 'addPasskey'), { answer: /^[0-9a-f-]{36}$/ }, 'a passkey first (no second factor yet: no aal2 asked)')
    // Adding TOTP now wants an aal2 session: the passkey's sign-in is one.
    const { access } = (await inPage(page, 'signInWithPasskey')).answer as { access: string }
    const added = await (await fetch(`${auth}/api/auth/mfa/totp`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(access) }, body: '{}' })).json() as { factor_id: string, secret: string }
    const verified = await fetch(`${auth}/api/auth/mfa/totp/${added.factor_id}/verify`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...bearer(access) }, body: JSON.stringify({ code: generateSync({ secret: added.secret }) })
    })
    t.equal(verified.status, 200, 'TOTP enrolled')
    await inPage(page, 'call', '/api/auth/logout')

    const firstStep = page.waitForResponse(`${auth}/api/auth/login`)
    const signedIn = await inPage(page, 'signInWithPassword', user.username, user.password)
    t.match(await (await firstStep).json(), { mfa_required: true, methods: ['totp', 'passkey', 'recovery_code'] }, 'the password asked a second step, a passkey among its ways')
    const claims = signedInAs(t, signedIn)
    t.match(claims, { sub: String(user.id), aal: 'aal2' })
    t.same(claims.amr, ['pwd', 'hwk', 'user', 'mfa'], 'the password and the passkey')
    t.equal((await read(page, '/api/detail')).status, 200, 'the cookies are set')

    await inPage(page, 'call', '/api/auth/logout')
    const byPasskey = await inPage(page, 'signInWithPasskey')
    t.same(signedInAs(t, byPasskey).amr, ['hwk', 'user', 'mfa'], 'the passkey alone: no second step, TOTP or not')
  })

  t.test('an authenticator that does not verify its user is refused by authgate, not only by the browser', async (t) => {
    // Chromium refuses by itself when the options ask user verification of an authenticator
    // that cannot, or does not, verify: nothing reaches authgate. The page then lowers the
    // options' requirement (a front end's bug, or a script of the user's), so Chromium makes
    // the answer, UV clear and nothing else changed, and authgate must judge it.
    const { page, cdp } = await visitor(t)
    await signedUp(t, page)
    const authenticatorId = await device(cdp, { verifies: false })
    t.match(await inPage(page, 'addPasskey'), { name: 'NotAllowedError' }, 'the docs\' code: Chromium refuses by itself, as the options require verification')
    const registration = await page.evaluate(async () => {
      const { challenge_id: challengeId, options } = await window.call!('/api/auth/passkeys/registration/options')
      options.authenticatorSelection.userVerification = 'discouraged'
      return { challengeId, credential: await window.startRegistration!({ optionsJSON: options }) }
    })
    t.equal(flagsOf(registration.credential.response.authenticatorData) & (UP | UV), UP, 'the answer: present, not verified')
    const refused = await inPage(page, 'call', '/api/auth/passkeys/registration/verify', { challenge_id: registration.challengeId, credential: registration.credential })
    t.match(refused, { status: 401, code: 'passkey_invalid', detail: /did not verify the user/ }, 'registration refused')
    t.same(await passkeysOf(page), [], 'no passkey kept')

    // A passkey made with verification, then used without it.
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId })
    const verifying = await device(cdp)
    t.match(await inPage(page, 'addPasskey'), { answer: /^[0-9a-f-]{36}$/ }, 'a passkey made with user verification')
    await cdp.send('WebAuthn.setUserVerified', { authenticatorId: verifying, isUserVerified: false })
    t.match(await inPage(page, 'signInWithPasskey'), { name: 'NotAllowedError' }, 'the docs\' code: Chromium refuses by itself')
    const assertion = await page.evaluate(async () => {
      const { challenge_id: challengeId, options } = await window.call!('/api/auth/passkeys/authentication/options')
      options.userVerification = 'discouraged'
      return { challengeId, credential: await window.startAuthentication!({ optionsJSON: options }) }
    })
    t.equal(flagsOf(assertion.credential.response.authenticatorData) & (UP | UV), UP, 'the assertion: present, not verified')
    const signIn = await inPage(page, 'call', '/api/auth/passkeys/authentication/verify', { challenge_id: assertion.challengeId, credential: assertion.credential })
    t.match(signIn, { status: 401, code: 'passkey_invalid', detail: /did not verify the user/ }, 'the sign-in refused')
  })

  t.test('an assertion made on a page WEBAUTHN_ORIGINS does not list is refused', async (t) => {
    const { page, cdp } = await visitor(t)
    await signedUp(t, page)
    await device(cdp)
    t.match(await inPage(page, 'addPasskey'), { answer: /^[0-9a-f-]{36}$/ })
    await inPage(page, 'call', '/api/auth/logout')
    // The same tab, its device and passkey, on the other origin: the same RP id, so Chromium signs.
    await open(page, other)
    const refused = await inPage(page, 'signInWithPasskey')
    t.match(refused, { status: 401, code: 'passkey_invalid', detail: /origin WEBAUTHN_ORIGINS does not list/ })
    t.equal((await read(page, '/api/detail')).status, 401, 'not signed in')
    await open(page, app)
    t.equal(signedInAs(t, await inPage(page, 'signInWithPasskey')).aal, 'aal2', 'the same passkey signs in from the front end\'s origin')
  })

  t.test('an assertion posted twice: the second is refused, its challenge spent', async (t) => {
    const { page, cdp } = await visitor(t)
    const user = await signedUp(t, page)
    await device(cdp)
    t.match(await inPage(page, 'addPasskey'), { answer: /^[0-9a-f-]{36}$/ })
    await inPage(page, 'call', '/api/auth/logout')
    const captured = await page.evaluate(async () => {
      const { challenge_id: challengeId, options } = await window.call!('/api/auth/passkeys/authentication/options')
      return { challengeId, credential: await window.startAuthentication!({ optionsJSON: options }) }
    })
    const post = () => inPage(page, 'call', '/api/auth/passkeys/authentication/verify', { challenge_id: captured.challengeId, credential: captured.credential })
    t.equal(signedInAs(t, await post()).sub, String(user.id), 'the first post signs in')
    t.match(await post(), { status: 400, code: 'passkey_challenge_invalid' }, 'the same again: refused')
    const fresh = await inPage(page, 'call', '/api/auth/passkeys/authentication/options')
    t.match(await inPage(page, 'call', '/api/auth/passkeys/authentication/verify', { challenge_id: fresh.answer.challenge_id, credential: captured.credential }), { status: 401, code: 'passkey_invalid', detail: /another challenge/ }, 'nor does it answer a new challenge')
  })

  t.test('a signature counter that goes back (a copied authenticator) is refused and audited', async (t) => {
    const { page, cdp } = await visitor(t)
    const user = await signedUp(t, page)
    const authenticatorId = await device(cdp)
    const passkeyId = (await inPage(page, 'addPasskey')).answer as string
    for (const time of ['first', 'second']) t.equal(signedInAs(t, await inPage(page, 'signInWithPasskey')).aal, 'aal2', `signed in a ${time} time`)
    const [key] = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials
    t.ok(key!.signCount >= 2, `the device has counted to ${key!.signCount}`)
    // The same key in a device whose counter starts again: a clone made before these sign-ins.
    await cdp.send('WebAuthn.removeCredential', { authenticatorId, credentialId: key!.credentialId })
    await cdp.send('WebAuthn.addCredential', { authenticatorId, credential: { ...key!, signCount: 0 } })
    const refused = await inPage(page, 'signInWithPasskey')
    t.match(refused, { status: 401, code: 'passkey_invalid', detail: /signature counter did not move ahead/ })

    // The audit trail, through the admin API: a client made by the command line (it reaches the
    // running server's PGlite folder through its command socket).
    const created = await run(process.execPath, ['src/cli.ts', 'clients', 'create', '--name', 'ops', '--audience', `${auth}/api/admin`, '--scope', 'admin:audit:read', '--json'], { cwd: ROOT, env })
    const client = JSON.parse(created.stdout) as { client_id: string, client_secret: string }
    const token = await (await fetch(`${auth}/oauth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(client.client_id, client.client_secret) },
      body: 'grant_type=client_credentials'
    })).json() as { access_token: string }
    type Event = { outcome: string, detail: Record<string, unknown> }
    /** The user's failures named `event` (the audit trail is written in batches: once there is one), newest first. */
    const failures = async (event: string): Promise<Event[]> => {
      let events: Event[] = []
      t.ok(await eventually(async () => {
        const res = await fetch(`${auth}/api/admin/audit?user_id=${user.id}&event=${event}`, { headers: bearer(token.access_token) })
        events = (await res.json() as { events: Event[] }).events.filter((e) => e.outcome === 'failure')
        return events.length > 0
      }, { everyMs: 100 }), `the audit trail has a failure ${event}`)
      return events
    }
    t.match(await failures('passkey_counter_regressed'), [{ detail: { passkey: passkeyId, stored: key!.signCount, shown: 1 } }], 'passkey_counter_regressed: the stored count and the one shown')
    t.match(await failures('login'), [{ detail: { method: 'passkey', reason: /signature counter did not move ahead/ } }], 'and a failed login')
  })
})
