import { exportJWK, generateKeyPair } from 'jose'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import Provider, { type Adapter, type AdapterPayload, type ClientMetadata, type KoaContextWithOIDC } from 'oidc-provider'
import type { Test } from 'tap'
import { closeOnce } from './local-server.ts'

/** An account at the upstream provider: its `sub` and the claims its ID token and userinfo carry. */
export interface UpstreamAccount { sub: string, claims: Record<string, unknown> }

export interface StartedProvider {
  /** http://127.0.0.1:PORT, or http://127.0.0.1:PORT/<tenant>/v2.0 when started with `tenant`. */
  issuer: string
  /** http://127.0.0.1:PORT, the origin. */
  url: string
  /** sub -> claims; tests add and change entries at any time: they are read at each login and token. */
  accounts: Map<string, Record<string, unknown>>
  /**
   * A browser-less sign-in: GETs `authorizationUrl` with a cookie jar of its own, signs in as
   * `sub` on the login page (its form, POSTed), and follows the redirects until one leaves the
   * provider's origin; returns that one (the relying party's redirect_uri with code, state and
   * iss, or with error and error_description when the provider refused the request).
   * Throws when a page other than the login form is met (an error page, e.g. a wrong
   * redirect_uri) or when `sub` is refused.
   */
  authorize: (authorizationUrl: string, sub: string) => Promise<URL>
  /**
   * An ID token for `sub` issued by the provider to `clientId` with `nonce`, as a native app's
   * SDK receives it: got by a real code flow (PKCE, scope "openid email profile") driven by
   * authorize() and the token endpoint, never signed by hand. A `clientId` not among the
   * configured clients is registered on first use as a public native client.
   */
  idTokenFor: (sub: string, opts: { clientId: string, nonce?: string }) => Promise<string>
  /** Closes the HTTP server (also done at teardown). */
  close: () => Promise<void>
}

export interface ProviderClient extends ClientMetadata {
  client_id: string
  client_secret?: string
  redirect_uris: string[]
}

/** Claims put in every ID token (scope openid) whenever the account has them: Google's and Entra's. */
const OPENID_CLAIMS = ['hd', 'tid', 'oid', 'ver', 'xms_edov']
const EMAIL_CLAIMS = ['email', 'email_verified']
const PROFILE_CLAIMS = ['name', 'family_name', 'given_name', 'middle_name', 'nickname', 'preferred_username',
  'profile', 'picture', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at']

/** A per-provider in-memory store for oidc-provider's models (its own MemoryAdapter warns on use). */
function memoryAdapter (): (model: string) => Adapter {
  const store = new Map<string, { payload: AdapterPayload, expiresAt: number }>()
  const get = (key: string): AdapterPayload | undefined => {
    const entry = store.get(key)
    if (entry === undefined) return undefined
    if (entry.expiresAt <= Date.now()) {
      store.delete(key)
      return undefined
    }
    return entry.payload
  }
  return (model) => ({
    async upsert (id, payload, expiresIn) {
      store.set(`${model}:${id}`, { payload, expiresAt: expiresIn === undefined ? Infinity : Date.now() + expiresIn * 1000 })
    },
    async find (id) { return get(`${model}:${id}`) },
    async findByUid (uid) {
      for (const [key, { payload }] of store) if (key.startsWith(`${model}:`) && payload.uid === uid) return get(key)
      return undefined
    },
    async findByUserCode (userCode) {
      for (const [key, { payload }] of store) if (key.startsWith(`${model}:`) && payload.userCode === userCode) return get(key)
      return undefined
    },
    async consume (id) {
      const payload = get(`${model}:${id}`)
      if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000)
    },
    async destroy (id) { store.delete(`${model}:${id}`) },
    async revokeByGrantId (grantId) {
      for (const [key, { payload }] of store) if (payload.grantId === grantId) store.delete(key)
    }
  })
}

export const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

const loginPage = (action: string, error?: string): string => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in to the test provider</h1>
${error === undefined ? '' : `<p role="alert">${escapeHtml(error)}</p>`}
<form method="post" action="${escapeHtml(action)}">
<label>Account <input name="login" autocomplete="username" autofocus></label>
<button type="submit">Sign in</button>
</form>
</body></html>`

async function readForm (req: IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk as Buffer)
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'))
}

/** A cookie jar enough for one origin: name, value and path; expired cookies dropped. */
class CookieJar {
  readonly #cookies = new Map<string, { value: string, path: string }>()
  take (response: Response): void {
    for (const line of response.headers.getSetCookie()) {
      const [pair = '', ...attributes] = line.split(';').map((part) => part.trim())
      const eq = pair.indexOf('=')
      const name = pair.slice(0, eq)
      const value = pair.slice(eq + 1)
      let path = '/'
      let expired = false
      for (const attribute of attributes) {
        const [key = '', val = ''] = attribute.split('=')
        if (key.toLowerCase() === 'path') path = val
        if (key.toLowerCase() === 'max-age' && Number(val) <= 0) expired = true
        if (key.toLowerCase() === 'expires' && Date.parse(val) <= Date.now()) expired = true
      }
      const key = `${name}\n${path}`
      if (expired || value === '') this.#cookies.delete(key)
      else this.#cookies.set(key, { value, path })
    }
  }

  header (url: URL): string {
    const pairs: string[] = []
    for (const [key, { value, path }] of this.#cookies) {
      const matches = url.pathname === path || url.pathname.startsWith(path.endsWith('/') ? path : `${path}/`)
      if (matches) pairs.push(`${key.slice(0, key.indexOf('\n'))}=${value}`)
    }
    return pairs.join('; ')
  }
}

/**
 * Follows a browser's way through a provider from `start`: redirects (with `jar`'s cookies),
 * the login form filled with `login` and POSTed, until a redirect leaves `origin`.
 * Shared by the OpenID Provider and the GitHub stand-in.
 */
export async function driveSignIn (start: string, origin: string, login: string): Promise<URL> {
  const jar = new CookieJar()
  let url = new URL(start)
  let method = 'GET'
  let body: URLSearchParams | undefined
  let loggedIn = false
  for (let hop = 0; hop < 20; hop++) {
    if (url.origin !== origin) return url
    const response = await fetch(url, {
      method,
      body,
      redirect: 'manual',
      headers: { cookie: jar.header(url), accept: 'text/html' }
    })
    jar.take(response)
    method = 'GET'
    body = undefined
    const location = response.headers.get('location')
    if (response.status >= 300 && response.status < 400 && location !== null) {
      url = new URL(location, url)
      continue
    }
    const html = await response.text()
    const form = /<form method="post" action="([^"]+)">/.exec(html)
    if (response.status !== 200 || form === null || !html.includes('name="login"')) {
      throw new Error(`sign-in stopped at ${url.href}: HTTP ${response.status}\n${html.slice(0, 2000)}`)
    }
    if (loggedIn) throw new Error(`sign-in as ${login} refused at ${url.href}:\n${html.slice(0, 2000)}`)
    loggedIn = true
    url = new URL(form[1]!.replace(/&#(\d+);/g, (_, code: string) => String.fromCharCode(Number(code))), url)
    method = 'POST'
    body = new URLSearchParams({ login })
  }
  throw new Error(`sign-in did not leave ${origin} within 20 hops`)
}

/**
 * A real OpenID Provider on 127.0.0.1 (panva's oidc-provider, OpenID Certified), playing
 * Google or Microsoft Entra for the relying party under test. No TLS; closed at teardown.
 *
 * - Authorization code flow; PKCE required for every client, S256 only (oidc-provider 9 knows
 *   no other method), the authorization response carries `iss` (RFC 9207; discovery says
 *   `authorization_response_iss_parameter_supported: true`).
 * - Login: a plain HTML form (`<input name="login">`, "Sign in"), POSTed to
 *   /interaction/<uid>/login; any `sub` in `accounts` signs in, another gets the form again with
 *   an error. Consent is granted without a page: loadExistingGrant grants what is requested;
 *   a consent prompt still raised (prompt=consent, native clients) is answered by a redirect.
 * - ID token (RS256, a key made at start; `kid` in the JWKS) from the token endpoint: iss, sub,
 *   aud (the client_id, a string), exp, iat, nonce (when sent); auth_time only when max_age or
 *   the client's require_auth_time asks; no `azp`, no `sid`, no at_hash (code flow). Then the
 *   account's claims of the requested scopes (conformIdTokenClaims: false): openid: hd, tid,
 *   oid, ver, xms_edov, plus any other claim name the initial `accounts` use outside the
 *   standard email and profile sets (a claim name first used by an account added later and not
 *   in these lists is dropped); email: email, email_verified; profile: name,
 *   preferred_username, given_name, family_name, picture, locale... The same at userinfo.
 * - Clients: `clients` as oidc-provider client metadata; with a client_secret they authenticate
 *   at the token endpoint with client_secret_post (openid-client's default; a test wanting
 *   client_secret_basic says so in token_endpoint_auth_method), without one they are public
 *   (`none`).
 * - `tenant` (Entra-like): the issuer is http://127.0.0.1:PORT/<tenant>/v2.0 (all endpoints under
 *   it), and /common/v2.0/.well-known/openid-configuration is the tenant's document with the
 *   issuer "http://127.0.0.1:PORT/{tenantid}/v2.0", as Microsoft's multi-tenant endpoint
 *   publishes it.
 */
export async function startOidcProvider (t: Test, opts: {
  clients: ProviderClient[]
  accounts?: Record<string, Record<string, unknown>>
  tenant?: string
}): Promise<StartedProvider> {
  const accounts = new Map(Object.entries(opts.accounts ?? {}))
  const extraOpenidClaims = new Set<string>()
  for (const claims of accounts.values()) {
    for (const name of Object.keys(claims)) {
      if (name !== 'sub' && !EMAIL_CLAIMS.includes(name) && !PROFILE_CLAIMS.includes(name)) extraOpenidClaims.add(name)
    }
  }

  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const mountPath = opts.tenant === undefined ? '' : `/${opts.tenant}/v2.0`
  const issuer = origin + mountPath

  const { privateKey } = await generateKeyPair('RS256', { extractable: true })
  const jwk = { ...await exportJWK(privateKey), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' }

  const clients = opts.clients.map((client): ClientMetadata => ({
    token_endpoint_auth_method: client.client_secret === undefined ? 'none' : 'client_secret_post',
    ...client
  }))

  const provider = new Provider(issuer, {
    adapter: memoryAdapter(),
    clients,
    jwks: { keys: [jwk as never] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    findAccount (_ctx, sub) {
      if (!accounts.has(sub)) return undefined
      return { accountId: sub, claims: () => ({ ...accounts.get(sub), sub }) }
    },
    claims: {
      openid: ['sub', ...new Set([...OPENID_CLAIMS, ...extraOpenidClaims])],
      email: EMAIL_CLAIMS,
      profile: PROFILE_CLAIMS
    },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    async loadExistingGrant (ctx: KoaContextWithOIDC) {
      const { oidc } = ctx
      const clientId = oidc.client!.clientId
      const grantId = oidc.result?.consent?.grantId ?? oidc.session!.grantIdFor(clientId)
      const grant = (grantId === undefined ? undefined : await oidc.provider.Grant.find(grantId)) ??
        new oidc.provider.Grant({ clientId, accountId: oidc.session!.accountId })
      grant.addOIDCScope(oidc.requestParamOIDCScopes)
      grant.addOIDCClaims(oidc.requestParamClaims)
      await grant.save()
      return grant
    },
    interactions: { url: (_ctx, interaction) => `${mountPath}/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource (ctx, form) { ctx.body = `<!DOCTYPE html><title>Sign out</title>${form}<button form="op.logoutForm" name="logout" value="yes">Sign out</button>` },
        postLogoutSuccessSource (ctx) { ctx.body = '<!DOCTYPE html><title>Signed out</title><p>Signed out.</p>' }
      }
    },
    clientBasedCORS: () => false,
    renderError (ctx, out) {
      ctx.type = 'html'
      ctx.body = `<!DOCTYPE html><title>Error</title><h1>${escapeHtml(out.error)}</h1><p>${escapeHtml(out.error_description ?? '')}</p>`
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      ClientCredentials: 600,
      DeviceCode: 600,
      Grant: 3600,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 3600,
      BackchannelAuthenticationRequest: 600
    }
  })

  const interaction = async (req: IncomingMessage, res: ServerResponse, rest: string): Promise<void> => {
    const details = await provider.interactionDetails(req, res)
    const action = `${mountPath}/interaction/${details.uid}/login`
    if (req.method === 'POST' && rest === `/interaction/${details.uid}/login`) {
      const login = (await readForm(req)).get('login') ?? ''
      if (accounts.has(login)) {
        // How the account signed in, as a provider's own login would say it: an `amr` and an `acr` the test gave the account.
        const { amr, acr } = accounts.get(login)!
        await provider.interactionFinished(req, res, {
          login: { accountId: login, ...(Array.isArray(amr) ? { amr: amr as string[] } : {}), ...(typeof acr === 'string' ? { acr } : {}) }
        }, { mergeWithLastSubmission: false })
        return
      }
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(loginPage(action, `No account "${login}" here.`))
      return
    }
    if (req.method !== 'GET' || rest !== `/interaction/${details.uid}`) {
      res.writeHead(404).end()
      return
    }
    if (details.prompt.name === 'login') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(loginPage(action))
      return
    }
    // consent: granted at once, whatever was asked.
    const { prompt: { details: missing }, params, session } = details
    const grant = (details.grantId === undefined ? undefined : await provider.Grant.find(details.grantId)) ??
      new provider.Grant({ accountId: session!.accountId, clientId: params.client_id as string })
    if (Array.isArray(missing.missingOIDCScope)) grant.addOIDCScope(missing.missingOIDCScope as string[])
    if (Array.isArray(missing.missingOIDCClaims)) grant.addOIDCClaims(missing.missingOIDCClaims as string[])
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true })
  }

  const callback = provider.callback()
  server.on('request', (req: IncomingMessage & { originalUrl?: string }, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', origin)
    if (opts.tenant !== undefined && url.pathname === '/common/v2.0/.well-known/openid-configuration') {
      fetch(`${issuer}/.well-known/openid-configuration`).then(async (response) => {
        const document = { ...await response.json() as Record<string, unknown>, issuer: `${origin}/{tenantid}/v2.0` }
        res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' }).end(JSON.stringify(document))
      }).catch((err: unknown) => res.writeHead(500).end(String(err)))
      return
    }
    if (url.pathname !== mountPath && !url.pathname.startsWith(`${mountPath}/`)) {
      res.writeHead(404).end()
      return
    }
    const rest = url.pathname.slice(mountPath.length) || '/'
    if (rest.startsWith('/interaction/')) {
      interaction(req, res, rest).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/plain' })
        res.end(String(err))
      })
      return
    }
    // As Express mounts a sub-app: the provider reads its mount path from originalUrl.
    req.originalUrl = req.url
    req.url = rest + url.search
    callback(req, res)
  })

  const registered = new Set(clients.map((client) => client.client_id))
  const clientAdapter = memoryAdapterFor(provider)
  const nativeRedirect = 'http://127.0.0.1/native-callback'

  const close = closeOnce(server)
  t.teardown(close)

  const authorize = (authorizationUrl: string, sub: string): Promise<URL> => driveSignIn(authorizationUrl, origin, sub)

  return {
    issuer,
    url: origin,
    accounts,
    authorize,
    async idTokenFor (sub, { clientId, nonce }) {
      let client = clients.find((c) => c.client_id === clientId)
      if (client === undefined) {
        client = {
          client_id: clientId,
          application_type: 'native',
          token_endpoint_auth_method: 'none',
          redirect_uris: [nativeRedirect],
          grant_types: ['authorization_code'],
          response_types: ['code']
        }
        if (!registered.has(clientId)) {
          await clientAdapter.upsert(clientId, client)
          registered.add(clientId)
        }
      }
      const redirectUri = client.redirect_uris![0]!
      const verifier = randomBytes(32).toString('base64url')
      const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json() as Record<string, string>
      const request = new URL(discovery.authorization_endpoint!)
      request.search = new URLSearchParams({
        client_id: clientId,
        response_type: 'code',
        scope: 'openid email profile',
        redirect_uri: redirectUri,
        state: randomBytes(8).toString('base64url'),
        code_challenge: createHash('sha256').update(verifier).digest('base64url'),
        code_challenge_method: 'S256',
        ...(nonce === undefined ? {} : { nonce })
      }).toString()
      const back = await authorize(request.href, sub)
      const code = back.searchParams.get('code')
      if (code === null) throw new Error(`no code for ${clientId}: ${back.href}`)
      const form = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier, client_id: clientId })
      const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' }
      const method = client.token_endpoint_auth_method
      if (method === 'client_secret_post') form.set('client_secret', client.client_secret!)
      else if (method === 'client_secret_basic') {
        headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(client.client_secret!)}`).toString('base64')}`
      } else if (method !== 'none') throw new Error(`idTokenFor: client authentication ${method} not supported`)
      const response = await fetch(discovery.token_endpoint!, { method: 'POST', headers, body: form })
      const tokens = await response.json() as Record<string, string>
      if (!response.ok || tokens.id_token === undefined) throw new Error(`token endpoint: HTTP ${response.status} ${JSON.stringify(tokens)}`)
      return tokens.id_token
    },
    close
  }
}

/** The adapter oidc-provider reads dynamic clients from (its Client model's). */
function memoryAdapterFor (provider: Provider): Adapter {
  return (provider.Client as unknown as { adapter: Adapter }).adapter
}
