import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose'
import * as client from 'openid-client'
import { chromium } from 'playwright-core'
import t from 'tap'
import { startGitHubStandIn } from './github-standin.ts'
import { startOidcProvider } from './oidc-provider.ts'

// The fixtures that play the upstream identity providers, proved without authgate: a relying
// party (openid-client) signs in at the OpenID Provider, and plain fetch at the GitHub stand-in.

const REDIRECT = 'http://127.0.0.1:1/oauth/callback'
// Debian's Chromium itself (its /usr/bin/chromium is a wrapper script), as test/browser.test.ts.
const CHROMIUM = '/usr/lib/chromium/chromium'

t.test('the OpenID Provider: discovery, a PKCE code flow with state and nonce, the claims in the ID token', async (t) => {
  const op = await startOidcProvider(t, {
    clients: [{ client_id: 'web', client_secret: 'web-secret', redirect_uris: [REDIRECT] }],
    accounts: {
      'entra-alice': { email: 'alice@contoso.test', email_verified: true, name: 'Alice', preferred_username: 'alice@contoso.test', tid: 'tenant-1', xms_edov: true, hd: 'contoso.test' }
    },
    tenant: 'tenant-1'
  })
  t.equal(op.issuer, `${op.url}/tenant-1/v2.0`)
  const config = await client.discovery(new URL(op.issuer), 'web', 'web-secret', undefined, { execute: [client.allowInsecureRequests] })
  const metadata = config.serverMetadata()
  t.equal(metadata.issuer, op.issuer)
  t.same(metadata.code_challenge_methods_supported, ['S256'])
  t.equal(metadata.authorization_response_iss_parameter_supported, true)

  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const request = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT,
    scope: 'openid email profile',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce
  })
  // Read at token time: a change after the login shows in the ID token.
  const back = await op.authorize(request.href, 'entra-alice')
  op.accounts.set('entra-alice', { ...op.accounts.get('entra-alice'), name: 'Alice Liddell' })
  t.equal(back.origin + back.pathname, REDIRECT)
  t.equal(back.searchParams.get('iss'), op.issuer, 'RFC 9207 iss on the redirect')
  t.equal(back.searchParams.get('state'), state)
  t.ok(back.searchParams.get('code'))

  const tokens = await client.authorizationCodeGrant(config, back, { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce })
  const claims = tokens.claims()!
  t.match(claims, {
    iss: op.issuer,
    sub: 'entra-alice',
    aud: 'web',
    nonce,
    email: 'alice@contoso.test',
    email_verified: true,
    name: 'Alice Liddell',
    preferred_username: 'alice@contoso.test',
    hd: 'contoso.test',
    tid: 'tenant-1',
    xms_edov: true
  })
  const info = await client.fetchUserInfo(config, tokens.access_token, 'entra-alice')
  t.equal(info.email, 'alice@contoso.test')

  // The signature checks against the published JWKS.
  const jwks = createRemoteJWKSet(new URL(metadata.jwks_uri!))
  const { protectedHeader } = await jwtVerify(tokens.id_token!, jwks, { issuer: op.issuer, audience: 'web' })
  t.equal(protectedHeader.alg, 'RS256')

  // Microsoft's /common document: the tenant's, with the template issuer.
  const common = await (await fetch(`${op.url}/common/v2.0/.well-known/openid-configuration`)).json() as Record<string, unknown>
  t.equal(common.issuer, `${op.url}/{tenantid}/v2.0`)
  t.equal(common.jwks_uri, metadata.jwks_uri)
})

t.test('the OpenID Provider refuses plain PKCE, a missing challenge and an unknown account', async (t) => {
  const op = await startOidcProvider(t, {
    clients: [{ client_id: 'web', client_secret: 'web-secret', redirect_uris: [REDIRECT] }],
    accounts: { alice: { email: 'alice@example.test', email_verified: true } }
  })
  t.equal(op.issuer, op.url)
  const config = await client.discovery(new URL(op.issuer), 'web', 'web-secret', undefined, { execute: [client.allowInsecureRequests] })
  const verifier = client.randomPKCECodeVerifier()
  const plain = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT, scope: 'openid', state: 's1', code_challenge: verifier, code_challenge_method: 'plain'
  })
  const refused = await op.authorize(plain.href, 'alice')
  t.equal(refused.searchParams.get('error'), 'invalid_request')
  t.match(refused.searchParams.get('error_description'), /code_challenge_method/)
  t.equal(refused.searchParams.get('code'), null)

  const none = client.buildAuthorizationUrl(config, { redirect_uri: REDIRECT, scope: 'openid', state: 's2' })
  const refusedToo = await op.authorize(none.href, 'alice')
  t.equal(refusedToo.searchParams.get('error'), 'invalid_request')
  t.match(refusedToo.searchParams.get('error_description'), /PKCE/i)

  const good = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT, scope: 'openid', state: 's3', code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256'
  })
  await t.rejects(op.authorize(good.href, 'mallory'), /refused/)
  const back = await op.authorize(good.href, 'alice')
  const wrong = await client.authorizationCodeGrant(config, back, { pkceCodeVerifier: client.randomPKCECodeVerifier(), expectedState: 's3' })
    .then(() => undefined, (err: unknown) => err)
  t.match(wrong, { error: 'invalid_grant' }, 'a wrong code_verifier at the token endpoint')
})

t.test('idTokenFor: an ID token as a native app receives it, signed by the provider', async (t) => {
  const op = await startOidcProvider(t, {
    clients: [{ client_id: 'web', client_secret: 'web-secret', redirect_uris: [REDIRECT] }],
    accounts: { bob: { email: 'bob@example.test', email_verified: false, hd: 'example.test' } }
  })
  const jwks = createRemoteJWKSet(new URL(`${op.issuer}/jwks`))
  const native = await op.idTokenFor('bob', { clientId: 'ios-app.apps.example', nonce: 'n-1' })
  const { payload } = await jwtVerify(native, jwks, { issuer: op.issuer, audience: 'ios-app.apps.example' })
  t.match(payload, { sub: 'bob', nonce: 'n-1', email: 'bob@example.test', email_verified: false, hd: 'example.test' })
  const web = decodeJwt(await op.idTokenFor('bob', { clientId: 'web' }))
  t.equal(web.aud, 'web')
  t.equal(web.nonce, undefined)
})

t.test('the GitHub stand-in: authorize, exchange, /user, /user/emails, orgs; a wrong code_verifier refused', async (t) => {
  const gh = await startGitHubStandIn(t, {
    clients: [{ client_id: 'gh-client', client_secret: 'gh-secret', redirect_uri: REDIRECT }],
    users: {
      octocat: {
        id: 583231,
        name: 'The Octocat',
        email: null,
        emails: [{ email: 'octocat@example.test', primary: true, verified: true }, { email: 'old@example.test', primary: false, verified: false }],
        orgs: ['acme']
      },
      hubot: { id: 7, emails: [{ email: 'hubot@example.test', primary: true, verified: true }] }
    }
  })
  const start = async (scope: string): Promise<{ verifier: string, back: URL }> => {
    const verifier = randomBytes(32).toString('base64url')
    const url = new URL('/login/oauth/authorize', gh.url)
    url.search = new URLSearchParams({
      client_id: 'gh-client',
      redirect_uri: REDIRECT,
      state: 'st',
      scope,
      code_challenge: createHash('sha256').update(verifier).digest('base64url'),
      code_challenge_method: 'S256'
    }).toString()
    return { verifier, back: await gh.authorize(url.href, 'octocat') }
  }
  const exchange = async (code: string, verifier: string): Promise<Record<string, string>> => {
    const response = await fetch(`${gh.url}/login/oauth/access_token`, {
      method: 'POST',
      headers: { accept: 'application/json', 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ client_id: 'gh-client', client_secret: 'gh-secret', code, redirect_uri: REDIRECT, code_verifier: verifier })
    })
    t.equal(response.status, 200)
    return await response.json() as Record<string, string>
  }

  const { verifier, back } = await start('read:user user:email read:org')
  t.equal(back.origin + back.pathname, REDIRECT)
  t.equal(back.searchParams.get('state'), 'st')
  const code = back.searchParams.get('code')!
  t.match(code, /^[0-9a-f]{20}$/)

  t.match(await exchange(code, randomBytes(32).toString('base64url')), { error: 'bad_verification_code', error_description: String, error_uri: String })
  const token = await exchange(code, verifier)
  t.match(token, { access_token: /^gho_/, token_type: 'bearer', scope: 'read:user,user:email,read:org' })
  t.match(await exchange(code, verifier), { error: 'bad_verification_code' }, 'a code serves once')

  const get = (path: string, accessToken = token.access_token!): Promise<Response> =>
    fetch(`${gh.url}${path}`, { headers: { authorization: `Bearer ${accessToken}`, accept: 'application/vnd.github+json' } })
  const user = await (await get('/user')).json()
  t.match(user, { login: 'octocat', id: 583231, node_id: String, name: 'The Octocat', email: null, type: 'User', avatar_url: String })
  t.same(await (await get('/user/emails')).json(), [
    { email: 'octocat@example.test', primary: true, verified: true, visibility: 'private' },
    { email: 'old@example.test', primary: false, verified: false, visibility: null }
  ])
  t.match(await (await get('/user/orgs')).json(), [{ login: 'acme', id: Number }])
  t.equal((await get('/orgs/acme/members/octocat')).status, 204)
  t.equal((await get('/orgs/acme/members/hubot')).status, 404)
  t.equal((await get('/orgs/other/members/octocat')).status, 404, 'the 302 to public_members, followed')
  t.match(await (await get('/user/memberships/orgs/acme')).json(), { state: 'active', role: 'member', organization: { login: 'acme' } })
  t.equal((await get('/user', 'gho_wrong')).status, 401)

  // Without user:email and read:org scopes.
  const narrow = await start('read:user')
  const narrowToken = await exchange(narrow.back.searchParams.get('code')!, narrow.verifier)
  t.equal((await get('/user/emails', narrowToken.access_token)).status, 404)
  t.equal((await get('/user/orgs', narrowToken.access_token)).status, 403)

  // GitHub's default token response is form-encoded; a redirect_uri not registered goes back with an error.
  const form = await start('')
  const formResponse = await fetch(`${gh.url}/login/oauth/access_token`, {
    method: 'POST',
    body: new URLSearchParams({ client_id: 'gh-client', client_secret: 'gh-secret', code: form.back.searchParams.get('code')!, code_verifier: form.verifier })
  })
  t.match(Object.fromEntries(new URLSearchParams(await formResponse.text())), { access_token: /^gho_/, token_type: 'bearer', scope: '' })
  const mismatch = new URL('/login/oauth/authorize', gh.url)
  mismatch.search = new URLSearchParams({ client_id: 'gh-client', redirect_uri: 'http://127.0.0.1:2/elsewhere', state: 'x' }).toString()
  const sent = await gh.authorize(mismatch.href, 'octocat')
  t.equal(sent.origin + sent.pathname, REDIRECT)
  t.equal(sent.searchParams.get('error'), 'redirect_uri_mismatch')
})

t.test('both login pages work in a real Chromium', { skip: !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}` }, async (t) => {
  const op = await startOidcProvider(t, {
    clients: [{ client_id: 'web', client_secret: 'web-secret', redirect_uris: [REDIRECT] }],
    accounts: { alice: { email: 'alice@example.test', email_verified: true } },
    tenant: 'contoso'
  })
  const gh = await startGitHubStandIn(t, {
    clients: [{ client_id: 'gh-client', client_secret: 'gh-secret', redirect_uri: REDIRECT }],
    users: { octocat: { id: 1, emails: [] } }
  })
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true })
  t.teardown(() => browser.close())
  const context = await browser.newContext()
  /** The URL the browser is sent back to (nothing listens there: the request is enough). A page each: the refused connection's error page would cut into the next. */
  const signIn = async (start: string, login: string): Promise<URL> => {
    const page = await context.newPage()
    await page.goto(start)
    await page.fill('input[name="login"]', 'nobody')
    await page.click('button[type="submit"]')
    await page.getByRole('alert').waitFor()
    await page.fill('input[name="login"]', login)
    const [request] = await Promise.all([
      page.waitForRequest((request) => request.url().startsWith(`${REDIRECT}?`)),
      page.click('button[type="submit"]', { noWaitAfter: true })
    ])
    await page.close()
    return new URL(request.url())
  }
  const config = await client.discovery(new URL(op.issuer), 'web', 'web-secret', undefined, { execute: [client.allowInsecureRequests] })
  const verifier = client.randomPKCECodeVerifier()
  const back = await signIn(client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT, scope: 'openid email', state: 'st', code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256'
  }).href, 'alice')
  const tokens = await client.authorizationCodeGrant(config, back, { pkceCodeVerifier: verifier, expectedState: 'st' })
  t.match(tokens.claims(), { sub: 'alice', email: 'alice@example.test' })

  const authorize = new URL('/login/oauth/authorize', gh.url)
  authorize.search = new URLSearchParams({ client_id: 'gh-client', state: 'gs', scope: 'read:user' }).toString()
  const ghBack = await signIn(authorize.href, 'octocat')
  t.equal(ghBack.searchParams.get('state'), 'gs')
  t.match(ghBack.searchParams.get('code'), /^[0-9a-f]{20}$/)
})
