import { existsSync } from 'node:fs'
import * as client from 'openid-client'
import { chromium } from 'playwright-core'
import t from 'tap'
import { debianProviderMissing, signInOnGlewlwydPages, startDebianProvider } from './idp-debian.ts'

// The relying party's callback: never called, authorize() stops at the first URL off the provider.
const redirectUri = 'http://127.0.0.1:9/oidc/callback'
const user = { username: 'ada', password: 'correct horse battery staple', email: 'ada@example.test', name: 'Ada Lovelace' }

t.test('Glewlwyd from Debian as an OpenID Connect provider, with openid-client', { skip: debianProviderMissing }, async (t) => {
  const idp = await startDebianProvider(t, { redirectUri, user })
  t.equal(idp.name, 'glewlwyd')
  t.match(idp.issuer, /^http:\/\/127\.0\.0\.1:\d+\/api\/oidc$/)

  // http on 127.0.0.1: openid-client refuses plain HTTP unless told.
  const config = await client.discovery(new URL(idp.issuer), idp.clientId, idp.clientSecret, undefined, { execute: [client.allowInsecureRequests] })
  const metadata = config.serverMetadata()
  t.equal(metadata.issuer, idp.issuer, 'discovery names the same issuer')
  t.ok(metadata.code_challenge_methods_supported?.includes('S256'))
  t.ok(metadata.id_token_signing_alg_values_supported?.includes('RS256'))

  const signIn = async (password: string): Promise<{ callback: URL, verifier: string, state: string, nonce: string }> => {
    const verifier = client.randomPKCECodeVerifier()
    const state = client.randomState()
    const nonce = client.randomNonce()
    const url = client.buildAuthorizationUrl(config, {
      redirect_uri: redirectUri,
      scope: 'openid email profile',
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
      nonce
    })
    return { callback: await idp.authorize(url.href, user.username, password), verifier, state, nonce }
  }

  await t.rejects(signIn('not the password'), /refused the sign-in/, 'a wrong password is refused')

  const { callback, verifier, state, nonce } = await signIn(user.password)
  t.equal(`${callback.origin}${callback.pathname}`, redirectUri, 'back to the redirect_uri')
  t.equal(callback.searchParams.get('state'), state)
  t.equal(callback.searchParams.get('iss'), idp.issuer, 'iss in the authorization response')

  const tokens = await client.authorizationCodeGrant(config, callback, { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce })
  const claims = tokens.claims()!
  t.equal(claims.iss, idp.issuer)
  t.equal(claims.aud, idp.clientId)
  t.equal(claims.nonce, nonce)
  t.match(claims.sub, /^\S+$/)
  t.equal(claims.email, user.email)
  t.equal(claims.email_verified, true)
  t.equal(claims.name, user.name)
  t.equal(tokens.scope, 'openid email profile')

  const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub)
  t.equal(info.email, user.email, 'userinfo agrees')

  // The code is single use.
  await t.rejects(client.authorizationCodeGrant(config, callback, { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce }))
})

// Debian's Chromium itself, as test/browser.test.ts drives it.
const CHROMIUM = '/usr/lib/chromium/chromium'

t.test('Glewlwyd\'s own login page in Chromium', { skip: debianProviderMissing || (!existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM} (Debian's chromium package)`) }, async (t) => {
  const idp = await startDebianProvider(t, { redirectUri, user })
  const config = await client.discovery(new URL(idp.issuer), idp.clientId, idp.clientSecret, undefined, { execute: [client.allowInsecureRequests] })
  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const url = client.buildAuthorizationUrl(config, { redirect_uri: redirectUri, scope: 'openid email profile', code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256', state, nonce })

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  // The relying party is not there: the browser's last stop, answered by the test.
  let arrive: (url: string) => void = () => {}
  const arrived = new Promise<string>((resolve) => { arrive = resolve })
  await page.route(`${redirectUri}?**`, async (route) => {
    arrive(route.request().url())
    await route.fulfill({ contentType: 'text/plain', body: 'relying party' })
  })
  await page.goto(url.href)
  t.equal(new URL(page.url()).pathname, '/login.html', 'the authorization endpoint sends the browser to the login page')
  await signInOnGlewlwydPages(page, user)
  const callback = new URL(await arrived)
  t.equal(callback.searchParams.get('state'), state)

  const tokens = await client.authorizationCodeGrant(config, callback, { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce })
  t.equal(tokens.claims()?.email, user.email, 'the code from the browser gives the user\'s ID token')
})
