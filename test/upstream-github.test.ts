import { createHash, randomBytes } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { build, postJson, register } from './helper.ts'
import { startGitHubStandIn, type GitHubStandIn, type GitHubUser } from './github-standin.ts'

// authgate's github preset against a STAND-IN for GitHub (test/github-standin.ts): github.com
// cannot be reached from the test machine, so a local server answers GitHub's documented OAuth
// app endpoints and REST shapes. OIDC_GITHUB_ISSUER and OIDC_GITHUB_API_URL both point at it.

const PUBLIC_URL = 'http://localhost:3000'
const REDIRECT_URI = `${PUBLIC_URL}/api/auth/oidc/github/callback`
const RETURN_TO = 'http://localhost:5173/signed-in'
// COOKIE_SECURE is on in the tests' apps: the host-only prefixed names.
const FLOW_COOKIE = '__Host-upstream_flow'
const ACCESS_COOKIE = '__Host-access_token'

/** GitHub's octocat: a numeric id, a private primary address GitHub verified, a member of acme. */
const octocat = (): GitHubUser => ({
  id: 583231,
  name: 'The Octocat',
  email: null,
  emails: [
    { email: 'octo-old@example.test', primary: false, verified: true },
    { email: 'octocat@example.test', primary: true, verified: true },
    { email: 'octo-typo@example.test', primary: false, verified: false }
  ],
  orgs: ['acme']
})

/** The stand-in with its one OAuth app (authgate's callback), and authgate with the github preset pointed at it. */
async function setUp (t: Test, users: Record<string, GitHubUser>, env: Record<string, string> = {}): Promise<{ app: FastifyInstance, gh: GitHubStandIn }> {
  const gh = await startGitHubStandIn(t, {
    clients: [{ client_id: 'gh-client', client_secret: 'gh-secret', redirect_uri: REDIRECT_URI }],
    users
  })
  const app = await build(t, {
    env: {
      PUBLIC_URL,
      OIDC_PROVIDERS: 'github',
      OIDC_GITHUB_ISSUER: gh.url,
      OIDC_GITHUB_API_URL: gh.url,
      OIDC_GITHUB_CLIENT_ID: 'gh-client',
      OIDC_GITHUB_CLIENT_SECRET: 'gh-secret',
      OIDC_RETURN_URLS: RETURN_TO,
      ...env
    }
  })
  return { app, gh }
}

/** GET /start: the provider's authorization URL and the flow cookie (name=value). */
async function start (app: FastifyInstance): Promise<{ authorization: URL, cookie: string }> {
  const res = await app.inject({ url: `/api/auth/oidc/github/start?return_to=${encodeURIComponent(RETURN_TO)}` })
  if (res.statusCode !== 302) throw new Error(`start: ${res.statusCode} ${res.body}`)
  const flow = res.cookies.find((c) => c.name === FLOW_COOKIE)
  if (flow === undefined) throw new Error(`start set no ${FLOW_COOKIE}: ${String(res.headers['set-cookie'])}`)
  return { authorization: new URL(String(res.headers.location)), cookie: `${flow.name}=${flow.value}` }
}

/** The provider's redirect back, delivered to authgate's callback in the browser that holds `cookie`. */
function callback (app: FastifyInstance, back: URL, cookie: string): Promise<LightMyRequestResponse> {
  return app.inject({ url: back.pathname + back.search, headers: { cookie } })
}

/** A whole browser sign-in as GitHub user `login`: start, the stand-in's page, the callback. */
async function signIn (app: FastifyInstance, gh: GitHubStandIn, login: string): Promise<LightMyRequestResponse> {
  const { authorization, cookie } = await start(app)
  const back = await gh.authorize(authorization.href, login)
  return await callback(app, back, cookie)
}

/** What the callback's redirect says in its fragment (#error=…), checked to go back to RETURN_TO. */
function fragmentOf (t: Test, res: LightMyRequestResponse): URLSearchParams {
  t.equal(res.statusCode, 302, 'the callback redirects')
  const location = new URL(String(res.headers.location))
  t.equal(location.origin + location.pathname + location.search, RETURN_TO, 'back to return_to')
  return new URLSearchParams(location.hash.slice(1))
}

/** The signed-in user of a callback's answer, read with its access cookie. */
async function whoSignedIn (t: Test, app: FastifyInstance, res: LightMyRequestResponse): Promise<{ id: number, username: string, email: string, email_verified: boolean }> {
  t.equal(res.statusCode, 302, 'the callback redirects')
  t.equal(res.headers.location, RETURN_TO, 'to return_to, nothing in the fragment')
  const access = res.cookies.find((c) => c.name === ACCESS_COOKIE)
  if (access === undefined) throw new Error(`no access cookie: ${String(res.headers.location)}`)
  const detail = await app.inject({ url: '/api/detail', headers: { cookie: `${ACCESS_COOKIE}=${access.value}` } })
  t.equal(detail.statusCode, 200, 'signed in')
  return detail.json().user
}

async function identitiesOf (app: FastifyInstance, userId: number) {
  return await app.db.selectFrom('user_identities').select(['provider', 'issuer', 'subject', 'email', 'email_verified'])
    .where('user_id', '=', userId).execute()
}

t.test('the numeric id is the identity: a login renamed at GitHub signs in the same account', async (t) => {
  const { app, gh } = await setUp(t, { octocat: octocat() })
  const first = await whoSignedIn(t, app, await signIn(app, gh, 'octocat'))
  t.match(first, { username: 'octocat', email: 'octocat@example.test', email_verified: true }, 'a new account: the login as username, the primary verified address')
  t.same(await identitiesOf(app, first.id), [{ provider: 'github', issuer: gh.url, subject: '583231', email: 'octocat@example.test', email_verified: true }])

  // The user renames the account at GitHub (and changes the primary address): the id stays.
  const renamed = gh.users.get('octocat')!
  gh.users.delete('octocat')
  gh.users.set('monalisa', { ...renamed, emails: [{ email: 'mona@example.test', primary: true, verified: true }] })
  const again = await whoSignedIn(t, app, await signIn(app, gh, 'monalisa'))
  t.equal(again.id, first.id, 'the same account')
  t.equal(again.email, 'octocat@example.test', 'the account\'s own address is not changed by the provider')
  t.match(await identitiesOf(app, first.id), [{ subject: '583231', email: 'mona@example.test' }], 'one identity, the address it now names')

  // Another GitHub user who takes the old login is someone else: a new account (octocat taken: another username).
  gh.users.set('octocat', { id: 9_000_001, emails: [{ email: 'newcomer@example.test', primary: true, verified: true }] })
  const newcomer = await whoSignedIn(t, app, await signIn(app, gh, 'octocat'))
  t.not(newcomer.id, first.id, 'the login now names another id: another account')
  t.equal(newcomer.email, 'newcomer@example.test')
  t.not(newcomer.username, first.username)
})

t.test('the address is the primary one GitHub verified, from /user/emails; a public profile email is never used', async (t) => {
  const { app, gh } = await setUp(t, {
    // Public profile address unverified, the primary verified one elsewhere.
    publicist: {
      id: 101,
      email: 'shown-on-profile@example.test',
      emails: [
        { email: 'shown-on-profile@example.test', primary: false, verified: false, visibility: 'public' },
        { email: 'real@example.test', primary: true, verified: true, visibility: 'private' }
      ]
    },
    // No verified address at all; a public profile email anyway.
    unverified: {
      id: 102,
      email: 'typed-in@example.test',
      emails: [{ email: 'typed-in@example.test', primary: true, verified: false, visibility: 'public' }]
    },
    // A verified address, but not the primary one.
    secondary: {
      id: 103,
      email: null,
      emails: [
        { email: 'primary-unverified@example.test', primary: true, verified: false },
        { email: 'secondary-verified@example.test', primary: false, verified: true }
      ]
    }
  })
  const publicist = await whoSignedIn(t, app, await signIn(app, gh, 'publicist'))
  t.match(publicist, { email: 'real@example.test', email_verified: true }, 'the primary verified address, not the profile\'s')

  t.same(Object.fromEntries(fragmentOf(t, await signIn(app, gh, 'unverified'))), { error: 'email_required' }, 'no verified address: email_required')
  t.same(Object.fromEntries(fragmentOf(t, await signIn(app, gh, 'secondary'))), { error: 'email_required' }, 'a primary that is not verified: email_required')
  const made = await app.db.selectFrom('users').select('email').where('email', 'in', ['typed-in@example.test', 'primary-unverified@example.test', 'secondary-verified@example.test']).execute()
  t.same(made, [], 'no account for them')
})

t.test('a profile email naming an account\'s address, unverified at GitHub, never reaches that account (LINK_BY_EMAIL=true)', async (t) => {
  const { app, gh } = await setUp(t, {
    // The attacker typed the victim's address into the profile; GitHub never verified it.
    squatter: {
      id: 201,
      email: 'victim@example.test',
      emails: [{ email: 'victim@example.test', primary: true, verified: false, visibility: 'public' }]
    },
    // The same, with a verified primary address of the attacker's own.
    squatter2: {
      id: 202,
      email: 'victim@example.test',
      emails: [
        { email: 'victim@example.test', primary: false, verified: false, visibility: 'public' },
        { email: 'attacker@example.test', primary: true, verified: true, visibility: 'private' }
      ]
    },
    // The victim's own GitHub account, where GitHub verified the address.
    owner: { id: 203, emails: [{ email: 'victim@example.test', primary: true, verified: true }] }
  }, { OIDC_GITHUB_LINK_BY_EMAIL: 'true' })
  const victim = await register(app, { username: 'victim', email: 'victim@example.test', password: 'correct horse battery staple' })
  // The victim proved the address here (what an email code or a reset does).
  await app.db.updateTable('users').set({ email_verified_at: new Date() }).where('id', '=', victim.id).execute()

  t.same(Object.fromEntries(fragmentOf(t, await signIn(app, gh, 'squatter'))), { error: 'email_required' }, 'the unverified profile address is not an address at all')
  const other = await whoSignedIn(t, app, await signIn(app, gh, 'squatter2'))
  t.not(other.id, victim.id, 'not signed into the victim\'s account')
  t.equal(other.email, 'attacker@example.test', 'an account of the attacker\'s own verified address')
  t.same(await identitiesOf(app, victim.id), [], 'nothing linked to the victim')

  // The control: the address verified at GitHub, with LINK_BY_EMAIL on, does link.
  const owner = await whoSignedIn(t, app, await signIn(app, gh, 'owner'))
  t.equal(owner.id, victim.id, 'GitHub verified it: linked by the verified address')
  t.match(await identitiesOf(app, victim.id), [{ subject: '203' }])
  t.same((await identitiesOf(app, victim.id)).map((i) => i.subject), ['203'], 'only the owner\'s identity')
})

t.test('ALLOWED_ORGS: a member signs in, anyone else is not_allowed', async (t) => {
  const { app, gh } = await setUp(t, {
    octocat: octocat(),
    outsider: { id: 301, emails: [{ email: 'outsider@example.test', primary: true, verified: true }], orgs: ['other-org'] },
    loner: { id: 302, emails: [{ email: 'loner@example.test', primary: true, verified: true }] }
  }, { OIDC_GITHUB_ALLOWED_ORGS: 'globex,acme' })
  const { authorization } = await start(app)
  t.same(authorization.searchParams.get('scope')?.split(' ').sort(), ['read:org', 'read:user', 'user:email'], 'read:org asked for, to see private memberships')

  t.match(await whoSignedIn(t, app, await signIn(app, gh, 'octocat')), { username: 'octocat' }, 'a member of acme, the second org listed')
  for (const login of ['outsider', 'loner']) {
    t.same(Object.fromEntries(fragmentOf(t, await signIn(app, gh, login))), { error: 'not_allowed' }, `${login}: not_allowed`)
  }
  t.same(await app.db.selectFrom('users').select('email').where('email', 'in', ['outsider@example.test', 'loner@example.test']).execute(), [], 'no account made for them')

  // What the stand-in answers to the membership check authgate makes, as GitHub documents it
  // ("Check organization membership for a user"): 204 a member, 404 not (the requester being
  // one), 302 to the public membership when the requester is not a member.
  const verifier = randomBytes(32).toString('base64url')
  const ask = new URL('/login/oauth/authorize', gh.url)
  ask.search = new URLSearchParams({ client_id: 'gh-client', redirect_uri: REDIRECT_URI, state: 's', scope: 'read:org', code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256' }).toString()
  const tokenOf = async (login: string): Promise<string> => {
    const back = await gh.authorize(ask.href, login)
    const response = await fetch(`${gh.url}/login/oauth/access_token`, {
      method: 'POST',
      headers: { accept: 'application/json' },
      body: new URLSearchParams({ client_id: 'gh-client', client_secret: 'gh-secret', code: back.searchParams.get('code')!, redirect_uri: REDIRECT_URI, code_verifier: verifier })
    })
    return (await response.json() as { access_token: string }).access_token
  }
  const check = async (token: string, path: string): Promise<Response> => await fetch(`${gh.url}${path}`, { headers: { authorization: `Bearer ${token}` }, redirect: 'manual' })
  const member = await tokenOf('octocat')
  t.equal((await check(member, '/orgs/acme/members/octocat')).status, 204)
  t.equal((await check(member, '/orgs/acme/members/outsider')).status, 404)
  const outsider = await check(await tokenOf('outsider'), '/orgs/acme/members/outsider')
  t.equal(outsider.status, 302)
  t.equal(outsider.headers.get('location'), `${gh.url}/orgs/acme/public_members/outsider`)
})

t.test('PKCE: authgate sends S256 and its verifier; a code of another flow is refused by the stand-in', async (t) => {
  const { app, gh } = await setUp(t, { octocat: octocat(), mallory: { id: 401, emails: [{ email: 'mallory@example.test', primary: true, verified: true }] } })
  const victim = await start(app)
  const q = victim.authorization.searchParams
  t.equal(victim.authorization.origin + victim.authorization.pathname, `${gh.url}/login/oauth/authorize`)
  t.equal(q.get('code_challenge_method'), 'S256')
  t.match(q.get('code_challenge'), /^[A-Za-z0-9_-]{43}$/)
  t.equal(q.get('redirect_uri'), REDIRECT_URI)
  t.equal(q.get('client_id'), 'gh-client')
  t.notOk(q.has('nonce'), 'no nonce: GitHub has no ID token')

  // Code injection: the attacker's own code (its flow, its verifier) put into the victim's
  // callback, with the victim's state. The stand-in refuses it: the victim's verifier is not
  // the one its challenge was made from.
  const attacker = await start(app)
  const attackerBack = await gh.authorize(attacker.authorization.href, 'mallory')
  const victimBack = await gh.authorize(victim.authorization.href, 'octocat')
  const injected = new URL(victimBack)
  injected.searchParams.set('code', attackerBack.searchParams.get('code')!)
  t.same(Object.fromEntries(fragmentOf(t, await callback(app, injected, victim.cookie))), { error: 'upstream_error' }, 'the code exchange failed: bad_verification_code')
  t.same(await app.db.selectFrom('users').select('email').execute(), [], 'nobody signed in')

  // The attacker's code was not spent (the stand-in spends a code by its success only): with its own flow it works.
  t.match(await whoSignedIn(t, app, await callback(app, attackerBack, attacker.cookie)), { email: 'mallory@example.test' }, 'the right verifier is taken')
})

t.test('POST /api/auth/oidc/github/id-token: GitHub issues no ID tokens, 401 id_token_invalid', async (t) => {
  const { app } = await setUp(t, { octocat: octocat() })
  const header = Buffer.from(JSON.stringify({ alg: 'RS256', typ: 'JWT' })).toString('base64url')
  const payload = Buffer.from(JSON.stringify({ iss: 'https://github.com', sub: '583231', aud: 'gh-client' })).toString('base64url')
  const res = await postJson(app, '/api/auth/oidc/github/id-token', { id_token: `${header}.${payload}.c2ln` })
  t.equal(res.statusCode, 401)
  t.match(res.json(), { code: 'id_token_invalid' })
  t.notOk(res.headers['set-cookie'], 'no cookie')
})
