import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Test } from 'tap'
import { closeOnce } from './local-server.ts'
import { driveSignIn, escapeHtml } from './oidc-provider.ts'

/** A GitHub account as the stand-in knows it. */
export interface GitHubUser {
  id: number
  name?: string | null
  /** The public email of the profile (GET /user's `email`): null, or any address, verified or not. */
  email?: string | null
  /** GET /user/emails. `visibility` defaults to "public" for the primary address when it is `email`, "private" for another primary, null otherwise. */
  emails: Array<{ email: string, primary: boolean, verified: boolean, visibility?: 'public' | 'private' | null }>
  /** Logins of the organizations the user belongs to (privately, GitHub's default). */
  orgs?: string[]
}

export interface GitHubClient { client_id: string, client_secret: string, redirect_uri: string }

export interface GitHubStandIn {
  /** http://127.0.0.1:PORT: both the web host (/login/oauth/...) and the REST API host (/user...). */
  url: string
  /** login -> user; tests add and change entries at any time. */
  users: Map<string, GitHubUser>
  /** Like a browser with the user `login` signed in: follows `authorizationUrl` through the stand-in's page and returns the redirect back (redirect_uri with code and state, or error). */
  authorize: (authorizationUrl: string, login: string) => Promise<URL>
  close: () => Promise<void>
}

interface PendingCode { clientId: string, redirectUri: string | null, challenge: string | null, scopes: string[], login: string, expiresAt: number }
interface IssuedToken { clientId: string, scopes: string[], login: string }

const DOCS = 'https://docs.github.com'
const orgId = (login: string): number => createHash('sha256').update(login.toLowerCase()).digest().readUInt32BE(0) >>> 1
/** GitHub's node ids, e.g. "U_kgDOBa1b2c" for users: a type prefix and a base64url of the id. */
const nodeId = (prefix: string, id: number): string => `${prefix}_kgDO${Buffer.from(String(id)).toString('base64url')}`

const page = (body: string): string => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Authorize application</title></head><body>${body}</body></html>`

/**
 * A STAND-IN for GitHub's OAuth app endpoints and the few REST endpoints a sign-in uses,
 * since github.com cannot be reached from the test machine. It answers the shapes GitHub
 * documents ("Authorizing OAuth apps", "Troubleshooting OAuth app access token request errors",
 * REST "Get the authenticated user", "List email addresses for the authenticated user",
 * "List organizations for the authenticated user", "Check organization membership for a user",
 * "Get an organization membership for the authenticated user"); it is not GitHub, and where the
 * documents are silent (what a wrong code_verifier returns) its choice is said below.
 *
 * - GET /login/oauth/authorize?client_id&redirect_uri&state&scope&code_challenge&code_challenge_method:
 *   an unknown client_id is a 404 page; a redirect_uri other than the registered one is sent to
 *   the registered one with error=redirect_uri_mismatch (as documented); a code_challenge_method
 *   other than S256 (GitHub accepts only S256) with error=invalid_request (the stand-in's
 *   choice). Otherwise a small page: a form (input name=login, "Sign in") POSTed back to the
 *   same URL; a known login redirects to redirect_uri?code=...&state=... (code: 20 hex, 10 min).
 * - POST /login/oauth/access_token: client_id, client_secret, code, redirect_uri, code_verifier
 *   in a form body, JSON body or the query. The answer follows Accept: JSON for
 *   application/json, else form-encoded (GitHub's default). Errors as GitHub sends them, HTTP
 *   200 with {error, error_description, error_uri}: incorrect_client_credentials,
 *   redirect_uri_mismatch, bad_verification_code (also for a missing or wrong code_verifier when
 *   the code had a challenge: the stand-in's choice). The code is spent by its success only.
 *   Token: {access_token: "gho_...", token_type: "bearer", scope: "read:org,user:email"}
 *   (GitHub's comma-separated scopes).
 * - REST (Authorization: Bearer or token; 401 "Requires authentication" / "Bad credentials";
 *   responses carry X-OAuth-Scopes):
 *   GET /user: the user object (login, id, node_id, avatar_url, html_url, type "User",
 *   site_admin, name, email (public, may be null), ...).
 *   GET /user/emails: [{email, primary, verified, visibility}]; needs scope user:email or user
 *   (else 404, one of the documented codes).
 *   GET /user/orgs: [{login, id, node_id, url, ..., description}]; needs user or read:org
 *   (else 403, as documented).
 *   GET /user/memberships/orgs/{org}: {state: "active", role: "member", organization, user...}
 *   or 404; needs read:org (else 403).
 *   GET /orgs/{org}/members/{username}: 204 when the requester and the user are members, 404
 *   when the requester is and the user is not, 302 to /orgs/{org}/public_members/{username}
 *   when the requester is not a member (or lacks read:org/user to see its private membership);
 *   that one answers 404, memberships being private here.
 * For an OAuth app the docs suggest /user/orgs with `read:org` (or `user`) to list the user's
 * organizations, and the membership endpoints for one named organization; an organization's
 * OAuth app access restrictions (not modelled) can hide it from both.
 */
export async function startGitHubStandIn (t: Test, opts: {
  clients: GitHubClient[]
  users: Record<string, GitHubUser>
}): Promise<GitHubStandIn> {
  const users = new Map(Object.entries(opts.users))
  const codes = new Map<string, PendingCode>()
  const tokens = new Map<string, IssuedToken>()
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers }).end(JSON.stringify(body))
  }
  const redirect = (res: ServerResponse, to: URL | string): void => {
    res.writeHead(302, { location: String(to) }).end()
  }
  const withParams = (base: string, params: Record<string, string | null>): URL => {
    const url = new URL(base)
    for (const [key, value] of Object.entries(params)) if (value !== null) url.searchParams.set(key, value)
    return url
  }

  const orgSimple = (login: string): Record<string, unknown> => {
    const id = orgId(login)
    const url = `${origin}/orgs/${login}`
    return {
      login,
      id,
      node_id: nodeId('O', id),
      url,
      repos_url: `${url}/repos`,
      events_url: `${url}/events`,
      hooks_url: `${url}/hooks`,
      issues_url: `${url}/issues`,
      members_url: `${url}/members{/member}`,
      public_members_url: `${url}/public_members{/member}`,
      avatar_url: `https://avatars.githubusercontent.com/u/${id}?v=4`,
      description: null
    }
  }
  const simpleUser = (login: string, user: GitHubUser): Record<string, unknown> => ({
    login,
    id: user.id,
    node_id: nodeId('U', user.id),
    avatar_url: `https://avatars.githubusercontent.com/u/${user.id}?v=4`,
    gravatar_id: '',
    url: `${origin}/users/${login}`,
    html_url: `https://github.com/${login}`,
    type: 'User',
    site_admin: false
  })

  const authorizePage = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const q = url.searchParams
    const client = opts.clients.find((c) => c.client_id === q.get('client_id'))
    if (client === undefined) {
      res.writeHead(404, { 'content-type': 'text/html; charset=utf-8' }).end(page('<h1>404</h1><p>Not Found</p>'))
      return
    }
    const state = q.get('state')
    const redirectUri = q.get('redirect_uri')
    if (redirectUri !== null && redirectUri !== client.redirect_uri) {
      redirect(res, withParams(client.redirect_uri, {
        error: 'redirect_uri_mismatch',
        error_description: 'The redirect_uri MUST match the registered callback URL for this application.',
        error_uri: `${DOCS}/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/#redirect-uri-mismatch`,
        state
      }))
      return
    }
    const back = redirectUri ?? client.redirect_uri
    const challenge = q.get('code_challenge')
    const method = q.get('code_challenge_method')
    if ((challenge !== null || method !== null) && (method !== 'S256' || challenge === null || !/^[A-Za-z0-9_-]{43}$/.test(challenge))) {
      redirect(res, withParams(back, { error: 'invalid_request', error_description: 'Only the S256 code_challenge_method is supported, with a code_challenge.', state }))
      return
    }
    const action = `/login/oauth/authorize?${q.toString()}`
    const form = (error?: string): string => page(`<h1>Sign in to the GitHub stand-in</h1>
${error === undefined ? '' : `<p role="alert">${escapeHtml(error)}</p>`}
<p>to authorize ${escapeHtml(client.client_id)} (scopes: ${escapeHtml(q.get('scope') ?? '')})</p>
<form method="post" action="${escapeHtml(action)}">
<label>Username <input name="login" autocomplete="username" autofocus></label>
<button type="submit">Sign in</button>
</form>`)
    if (req.method !== 'POST') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(form())
      return
    }
    const login = new URLSearchParams(await readBody(req)).get('login') ?? ''
    if (!users.has(login)) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(form(`Incorrect username: ${login}`))
      return
    }
    const code = randomBytes(10).toString('hex')
    codes.set(code, {
      clientId: client.client_id,
      redirectUri,
      challenge,
      scopes: (q.get('scope') ?? '').split(/[\s,]+/).filter((s) => s !== ''),
      login,
      expiresAt: Date.now() + 10 * 60_000
    })
    redirect(res, withParams(back, { code, state }))
  }

  const accessToken = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const raw = await readBody(req)
    const params = new URLSearchParams(url.search)
    if ((req.headers['content-type'] ?? '').includes('json') && raw !== '') {
      for (const [key, value] of Object.entries(JSON.parse(raw) as Record<string, unknown>)) params.set(key, String(value))
    } else {
      for (const [key, value] of new URLSearchParams(raw)) params.set(key, value)
    }
    const wantsJson = (req.headers.accept ?? '').includes('json')
    const answer = (body: Record<string, string>): void => {
      if (wantsJson) json(res, 200, body)
      else res.writeHead(200, { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' }).end(new URLSearchParams(body).toString())
    }
    const error = (code: string, description: string, anchor: string): void => answer({
      error: code,
      error_description: description,
      error_uri: `${DOCS}/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#${anchor}`
    })
    const client = opts.clients.find((c) => c.client_id === params.get('client_id'))
    if (client === undefined || client.client_secret !== params.get('client_secret')) {
      error('incorrect_client_credentials', 'The client_id and/or client_secret passed are incorrect.', 'incorrect-client-credentials')
      return
    }
    const code = params.get('code') ?? ''
    const pending = codes.get(code)
    if (pending === undefined || pending.clientId !== client.client_id || pending.expiresAt < Date.now()) {
      error('bad_verification_code', 'The code passed is incorrect or expired.', 'bad-verification-code')
      return
    }
    const redirectUri = params.get('redirect_uri')
    if (redirectUri !== null && redirectUri !== (pending.redirectUri ?? client.redirect_uri)) {
      error('redirect_uri_mismatch', 'The redirect_uri MUST match the registered callback URL for this application.', 'redirect-uri-mismatch')
      return
    }
    if (pending.challenge !== null) {
      const verifier = params.get('code_verifier') ?? ''
      if (createHash('sha256').update(verifier).digest('base64url') !== pending.challenge) {
        error('bad_verification_code', 'The code passed is incorrect or expired.', 'bad-verification-code')
        return
      }
    }
    codes.delete(code)
    const token = `gho_${randomBytes(27).toString('base64url').replace(/[-_]/g, '0').slice(0, 36)}`
    tokens.set(token, { clientId: client.client_id, scopes: pending.scopes, login: pending.login })
    answer({ access_token: token, token_type: 'bearer', scope: pending.scopes.join(',') })
  }

  const api = (req: IncomingMessage, res: ServerResponse, path: string): void => {
    const authorization = req.headers.authorization ?? ''
    const match = /^(?:bearer|token) (\S+)$/i.exec(authorization)
    if (match === null) {
      json(res, 401, { message: 'Requires authentication', documentation_url: `${DOCS}/rest`, status: '401' })
      return
    }
    const token = tokens.get(match[1]!)
    const user = token === undefined ? undefined : users.get(token.login)
    if (token === undefined || user === undefined) {
      json(res, 401, { message: 'Bad credentials', documentation_url: `${DOCS}/rest`, status: '401' })
      return
    }
    const has = (...scopes: string[]): boolean => scopes.some((scope) => token.scopes.includes(scope))
    const headers = { 'x-oauth-scopes': token.scopes.join(', '), 'x-github-media-type': 'github.v3; format=json' }
    const notFound = (documentation: string): void => json(res, 404, { message: 'Not Found', documentation_url: `${DOCS}/rest/${documentation}`, status: '404' }, headers)
    const orgs = user.orgs ?? []
    const isMember = (org: string, of: GitHubUser): boolean => (of.orgs ?? []).some((o) => o.toLowerCase() === org.toLowerCase())
    const canSeeOrgs = has('read:org', 'write:org', 'admin:org', 'user')
    let m: RegExpExecArray | null
    if (path === '/user') {
      json(res, 200, {
        ...simpleUser(token.login, user),
        followers_url: `${origin}/users/${token.login}/followers`,
        organizations_url: `${origin}/users/${token.login}/orgs`,
        repos_url: `${origin}/users/${token.login}/repos`,
        user_view_type: 'private',
        name: user.name ?? null,
        company: null,
        blog: '',
        location: null,
        email: user.email ?? null,
        hireable: null,
        bio: null,
        twitter_username: null,
        notification_email: null,
        public_repos: 0,
        public_gists: 0,
        followers: 0,
        following: 0,
        created_at: '2020-01-01T00:00:00Z',
        updated_at: '2020-01-01T00:00:00Z'
      }, headers)
    } else if (path === '/user/emails') {
      if (!has('user:email', 'user')) {
        notFound('users/emails#list-email-addresses-for-the-authenticated-user')
        return
      }
      json(res, 200, user.emails.map((e) => ({
        email: e.email,
        primary: e.primary,
        verified: e.verified,
        visibility: e.visibility !== undefined ? e.visibility : e.primary ? (e.email === user.email ? 'public' : 'private') : null
      })), headers)
    } else if (path === '/user/orgs') {
      if (!canSeeOrgs) {
        json(res, 403, { message: 'You need at least read:org scope or user scope to list your organizations.', documentation_url: `${DOCS}/rest/orgs/orgs#list-organizations-for-the-authenticated-user`, status: '403' }, headers)
        return
      }
      json(res, 200, orgs.map(orgSimple), headers)
    } else if ((m = /^\/user\/memberships\/orgs\/([^/]+)$/.exec(path)) !== null) {
      const org = decodeURIComponent(m[1]!)
      if (!canSeeOrgs) {
        json(res, 403, { message: 'You need at least read:org scope or user scope to view your organization memberships.', documentation_url: `${DOCS}/rest/orgs/members#get-an-organization-membership-for-the-authenticated-user`, status: '403' }, headers)
        return
      }
      const name = orgs.find((o) => o.toLowerCase() === org.toLowerCase())
      if (name === undefined) {
        notFound('orgs/members#get-an-organization-membership-for-the-authenticated-user')
        return
      }
      json(res, 200, {
        url: `${origin}/orgs/${name}/memberships/${token.login}`,
        state: 'active',
        role: 'member',
        organization_url: `${origin}/orgs/${name}`,
        organization: orgSimple(name),
        user: simpleUser(token.login, user)
      }, headers)
    } else if ((m = /^\/orgs\/([^/]+)\/members\/([^/]+)$/.exec(path)) !== null) {
      const org = decodeURIComponent(m[1]!)
      const username = decodeURIComponent(m[2]!)
      if (!canSeeOrgs || !isMember(org, user)) {
        res.writeHead(302, { location: `${origin}/orgs/${m[1]}/public_members/${m[2]}`, ...headers }).end()
        return
      }
      const other = users.get(username)
      if (other !== undefined && isMember(org, other)) res.writeHead(204, headers).end()
      else notFound('orgs/members#check-organization-membership-for-a-user')
    } else if (/^\/orgs\/[^/]+\/public_members\/[^/]+$/.test(path)) {
      notFound('orgs/members#check-public-organization-membership-for-a-user')
    } else {
      notFound('')
    }
  }

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', origin)
    const done = (err: unknown): void => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' })
      res.end(String(err))
    }
    if (url.pathname === '/login/oauth/authorize' && (req.method === 'GET' || req.method === 'POST')) {
      authorizePage(req, res, url).catch(done)
    } else if (url.pathname === '/login/oauth/access_token' && req.method === 'POST') {
      accessToken(req, res, url).catch(done)
    } else if (req.method === 'GET') {
      api(req, res, url.pathname)
    } else {
      json(res, 404, { message: 'Not Found', documentation_url: `${DOCS}/rest`, status: '404' })
    }
  })

  const close = closeOnce(server)
  t.teardown(close)

  return {
    url: origin,
    users,
    authorize: (authorizationUrl, login) => driveSignIn(authorizationUrl, origin, login),
    close
  }
}

async function readBody (req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}
