import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { build, register } from './helper.ts'
import { debianProviderMissing, startDebianProvider, type DebianProvider } from './idp-debian.ts'

// authgate's generic preset against an OpenID provider nobody here wrote: Glewlwyd from
// Debian's package (test/idp-debian.ts), its discovery, login, consent, code flow with PKCE
// S256, RFC 9207 iss and RS256 ID tokens, as a browser-less user drives them.

const PUBLIC_URL = 'http://localhost:3000'
const REDIRECT_URI = `${PUBLIC_URL}/api/auth/oidc/glew/callback`
const RETURN_TO = 'http://localhost:5173/signed-in'
const FLOW_COOKIE = '__Host-upstream_flow'
const ACCESS_COOKIE = '__Host-access_token'
const ada = { username: 'ada', password: 'correct horse battery staple', email: 'ada@example.test', name: 'Ada Lovelace' }

/** authgate with one generic provider, `glew`, Glewlwyd's client. */
async function authgate (t: Test, idp: DebianProvider, env: Record<string, string> = {}): Promise<FastifyInstance> {
  return await build(t, {
    env: {
      PUBLIC_URL,
      OIDC_PROVIDERS: 'glew',
      OIDC_GLEW_ISSUER: idp.issuer,
      OIDC_GLEW_CLIENT_ID: idp.clientId,
      OIDC_GLEW_CLIENT_SECRET: idp.clientSecret,
      OIDC_RETURN_URLS: RETURN_TO,
      ...env
    }
  })
}

/** Start, Glewlwyd's login and consent as `password`, then the callback with the flow cookie. */
async function signIn (t: Test, app: FastifyInstance, idp: DebianProvider, password = ada.password): Promise<LightMyRequestResponse> {
  const start = await app.inject({ url: `/api/auth/oidc/glew/start?return_to=${encodeURIComponent(RETURN_TO)}` })
  t.equal(start.statusCode, 302, 'start: to the provider')
  const authorization = new URL(String(start.headers.location))
  t.equal(authorization.searchParams.get('code_challenge_method'), 'S256')
  t.equal(authorization.searchParams.get('redirect_uri'), REDIRECT_URI)
  const flow = start.cookies.find((c) => c.name === FLOW_COOKIE)!
  const back = await idp.authorize(authorization.href, ada.username, password)
  t.equal(back.origin + back.pathname, REDIRECT_URI, 'Glewlwyd sends the browser back to authgate')
  t.equal(back.searchParams.get('iss'), idp.issuer, 'with iss (RFC 9207)')
  const res = await app.inject({ url: back.pathname + back.search, headers: { cookie: `${flow.name}=${flow.value}` } })
  t.equal(res.statusCode, 302)
  t.match(String(res.headers['set-cookie']), new RegExp(`${FLOW_COOKIE}=;`), 'the flow cookie is cleared')
  return res
}

/** The access cookie of a signed-in callback, as a Cookie header. */
function accessCookie (res: LightMyRequestResponse): string {
  const access = res.cookies.find((c) => c.name === ACCESS_COOKIE)
  if (access === undefined) throw new Error(`not signed in: ${String(res.headers.location)}`)
  return `${ACCESS_COOKIE}=${access.value}`
}

t.test('sign-in with Glewlwyd from Debian', { skip: debianProviderMissing }, async (t) => {
  // One Glewlwyd for the apps below: they share PUBLIC_URL, so one redirect_uri.
  const idp = await startDebianProvider(t, { redirectUri: REDIRECT_URI, user: ada })

  t.test('TRUST_EMAIL=true: a new account, the address verified, the identity (issuer, sub) listed; again the same account', async (t) => {
    const app = await authgate(t, idp, { OIDC_GLEW_TRUST_EMAIL: 'true' })
    const res = await signIn(t, app, idp)
    t.equal(res.headers.location, RETURN_TO, 'back to return_to, nothing in the fragment')
    const cookie = accessCookie(res)
    const detail = await app.inject({ url: '/api/detail', headers: { cookie } })
    t.equal(detail.statusCode, 200, `signed in (glewlwyd: ${idp.output().slice(-500)})`)
    const user = detail.json().user
    t.match(user, { username: 'ada', email: ada.email, email_verified: true })

    const listed = await app.inject({ url: '/api/auth/identities', headers: { cookie } })
    t.equal(listed.statusCode, 200)
    const { identities } = listed.json()
    t.match(identities, [{ provider: 'glew', email: ada.email, subject: String }])
    t.equal(identities.length, 1)
    const stored = await app.db.selectFrom('user_identities').select(['issuer', 'subject']).where('user_id', '=', user.id).execute()
    t.same(stored, [{ issuer: idp.issuer, subject: identities[0].subject }], 'the identity is (issuer, sub): Glewlwyd\'s issuer and its subject')
    t.not(identities[0].subject, ada.username, 'Glewlwyd\'s public subject identifier, not the username')

    const again = await signIn(t, app, idp)
    const second = await app.inject({ url: '/api/detail', headers: { cookie: accessCookie(again) } })
    t.equal(second.json().user.id, user.id, 'the same account the second time')
    t.equal((await app.db.selectFrom('users').select('id').execute()).length, 1, 'one account')
  })

  t.test('the generic preset\'s default (TRUST_EMAIL=false): signed in, the address not taken as verified', async (t) => {
    const app = await authgate(t, idp)
    const res = await signIn(t, app, idp)
    const detail = await app.inject({ url: '/api/detail', headers: { cookie: accessCookie(res) } })
    t.match(detail.json().user, { username: 'ada', email: ada.email, email_verified: false })
  })

  t.test('the address of an account already: #error=account_exists, not signed in', async (t) => {
    const app = await authgate(t, idp, { OIDC_GLEW_TRUST_EMAIL: 'true' })
    const local = await register(app, { username: 'ada-local', email: ada.email, password: 'another long password here' })
    const res = await signIn(t, app, idp)
    t.equal(res.headers.location, `${RETURN_TO}#error=account_exists`)
    t.notOk(res.cookies.some((c) => c.name === ACCESS_COOKIE && c.value !== ''), 'no access cookie')
    t.same(await app.db.selectFrom('user_identities').select('user_id').execute(), [], 'nothing linked')
    t.equal((await app.db.selectFrom('users').select('id').execute()).map((u) => u.id).join(), String(local.id), 'no other account')
  })
})
