import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Test } from 'tap'
import { bearer, uniqueUser } from './helper.ts'
import { startOidcProvider, type StartedProvider } from './oidc-provider.ts'

// The browser flow of an upstream sign-in driven through authgate (app.inject) and the OpenID
// Provider of test/oidc-provider.ts, for test/upstream*.test.ts: start, the provider's login,
// the callback with or without the flow's cookie, and what the answer says.

/** The public URL the apps answer at: the redirect_uri is <PUBLIC_URL>/api/auth/oidc/<name>/callback. */
export const PUBLIC_URL = 'http://localhost:3000'
export const RETURN = 'http://localhost:5173/signed-in'
export const OTHER_RETURN = 'http://localhost:5173/settings'
export const CLIENT = { id: 'authgate', secret: 'authgate-secret-0123456789' }
export const FLOW_COOKIE = '__Host-upstream_flow'

export const redirectOf = (name: string): string => `${PUBLIC_URL}/api/auth/oidc/${name}/callback`

/** A provider on its own fixture (an issuer of its own: identities never cross providers), with authgate's client registered for `names`. */
export async function providerFor (t: Test, names: string[], accounts: Record<string, Record<string, unknown>> = {}, tenant?: string): Promise<StartedProvider> {
  return await startOidcProvider(t, {
    clients: [{ client_id: CLIENT.id, client_secret: CLIENT.secret, redirect_uris: names.map(redirectOf) }],
    accounts,
    tenant
  })
}

/** The OIDC_<NAME>_* variables of provider `name` at `op`, with `settings` (SETTING: value) over them. */
export function providerEnv (name: string, op: StartedProvider, settings: Record<string, string> = {}): Record<string, string> {
  const prefix = `OIDC_${name.toUpperCase()}_`
  return {
    [`${prefix}ISSUER`]: op.issuer,
    [`${prefix}CLIENT_ID`]: CLIENT.id,
    [`${prefix}CLIENT_SECRET`]: CLIENT.secret,
    ...Object.fromEntries(Object.entries(settings).map(([key, value]) => [prefix + key, value]))
  }
}

/** The cookies a response sets, by name (a cleared one: ''). */
export function setCookies (res: LightMyRequestResponse): Map<string, string> {
  const header = res.headers['set-cookie']
  const lines = header === undefined ? [] : Array.isArray(header) ? header : [header]
  return new Map(lines.map((line) => {
    const pair = line.split(';')[0]!
    const eq = pair.indexOf('=')
    return [pair.slice(0, eq), pair.slice(eq + 1)]
  }))
}

/** A browser flow begun: the provider's authorization URL and the Cookie header that binds the flow to this browser. */
export interface Begun { url: string, cookie: string }

/** GET …/start: its answer, and the flow (a 302 with the flow cookie) when it began. */
export async function start (app: FastifyInstance, name: string, returnTo = RETURN): Promise<{ res: LightMyRequestResponse, begun?: Begun }> {
  const res = await app.inject({ url: `/api/auth/oidc/${name}/start?return_to=${encodeURIComponent(returnTo)}` })
  const secret = setCookies(res).get(FLOW_COOKIE)
  if (res.statusCode !== 302 || secret === undefined) return { res }
  return { res, begun: { url: res.headers.location as string, cookie: `${FLOW_COOKIE}=${secret}` } }
}

/** The provider's redirect back to authgate, as the browser would follow it, after signing in as `sub` there. */
export async function atProvider (op: StartedProvider, begun: Begun, sub: string): Promise<URL> {
  return await op.authorize(begun.url, sub)
}

/** The callback, with `cookie` (the flow's, or another, or none): authgate's answer, its Location, and the cookies it set. */
export async function callback (app: FastifyInstance, back: URL, cookie: string | undefined): Promise<{ res: LightMyRequestResponse, location: URL | undefined, cookies: Map<string, string> }> {
  const res = await app.inject({ url: back.pathname + back.search, headers: cookie === undefined ? {} : { cookie } })
  const location = typeof res.headers.location === 'string' ? new URL(res.headers.location) : undefined
  return { res, location, cookies: setCookies(res) }
}

/** A whole browser sign-in as `sub` at provider `name`: start, the provider's login, the callback. */
export async function signIn (app: FastifyInstance, op: StartedProvider, name: string, sub: string, returnTo = RETURN) {
  const { res, begun } = await start(app, name, returnTo)
  if (begun === undefined) throw new Error(`start failed: ${res.statusCode} ${res.body}`)
  return await callback(app, await atProvider(op, begun, sub), begun.cookie)
}

/** The fragment of a Location as its parameters. */
export const fragmentOf = (location: URL | undefined): URLSearchParams => new URLSearchParams(location?.hash.slice(1) ?? '')

/** The access token an upstream sign-in's cookies carry (COOKIE_SECURE: the __Host- name). */
export const accessOf = (cookies: Map<string, string>): string | undefined => cookies.get('__Host-access_token') || undefined

/** Whether a callback's answer signed the browser in: a 302 to return_to exactly, the auth cookies, no fragment. */
export function signedIn (t: Test, answer: Awaited<ReturnType<typeof callback>>, returnTo = RETURN): string {
  t.equal(answer.res.statusCode, 302, 'a redirect')
  t.equal(answer.location?.href, returnTo, 'to return_to, nothing in the fragment')
  const access = accessOf(answer.cookies)
  t.ok(access, 'the access cookie set')
  t.ok(answer.cookies.get('__Secure-refresh_token'), 'the refresh cookie set')
  t.equal(answer.cookies.get(FLOW_COOKIE), '', 'the flow cookie cleared')
  return access ?? ''
}

/** Whether a callback's answer is a refusal sent back to `returnTo` with #error=`code`, and no auth cookie. */
export function refused (t: Test, answer: Awaited<ReturnType<typeof callback>>, code: string, returnTo = RETURN): void {
  t.equal(answer.res.statusCode, 302, `${code}: a redirect`)
  t.equal(answer.location === undefined ? undefined : answer.location.origin + answer.location.pathname, returnTo, `${code}: to return_to`)
  t.same(Object.fromEntries(fragmentOf(answer.location)), { error: code }, `#error=${code}`)
  t.equal(answer.location?.search, '', 'nothing in the query string')
  t.notOk(accessOf(answer.cookies), `${code}: no access cookie`)
  t.notOk(answer.cookies.get('__Secure-refresh_token'), `${code}: no refresh cookie`)
}

/** The user /api/detail says the token is of. */
export async function detailOf (app: FastifyInstance, access: string): Promise<{ id: number, username: string, email: string, email_verified: boolean }> {
  const res = await app.inject({ url: '/api/detail', headers: bearer(access) })
  if (res.statusCode !== 200) throw new Error(`detail: ${res.statusCode} ${res.body}`)
  return res.json().user
}

/** The identities linked to user `userId`, straight from the database: (provider, subject) pairs. */
export async function identitiesIn (app: FastifyInstance, userId: number): Promise<string[]> {
  const rows = await app.db.selectFrom('user_identities').select(['provider', 'subject']).where('user_id', '=', userId).orderBy('created_at').execute()
  return rows.map((row) => `${row.provider}:${row.subject}`)
}

/** How many accounts hold `email`. */
export async function accountsWith (app: FastifyInstance, email: string): Promise<number> {
  const rows = await app.db.selectFrom('users').select('id').where('email', '=', email).execute()
  return rows.length
}

/** A new, unique upstream account's claims: a verified address by default. */
export function person (prefix: string, claims: Record<string, unknown> = {}): { sub: string, email: string, claims: Record<string, unknown> } {
  const { username, email } = uniqueUser(prefix)
  return { sub: `${username}-sub`, email, claims: { email, email_verified: true, preferred_username: username, name: `Person ${username}`, ...claims } }
}

/** How many sessions user `userId` has ever had. */
export async function sessionsOf (app: FastifyInstance, userId: number): Promise<number> {
  return (await app.db.selectFrom('sessions').select('id').where('user_id', '=', userId).execute()).length
}

/** Marks the user's address proven, as a verification would have. */
export async function verifyAddress (app: FastifyInstance, userId: number): Promise<void> {
  await app.db.updateTable('users').set({ email_verified_at: new Date() }).where('id', '=', userId).execute()
}
