import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import t, { type Test } from 'tap'
import { parse } from 'yaml'
import { echoUpstream, HOST, nginxBinary, nginxConfig, stop, WAIT_MS, type Upstream } from './gateway-proof.ts'
import { basic, build, claimsOf, login, TestClock } from './helper.ts'
import { freePort, listensOn } from './server-process.ts'

// docs/service-to-service.md and docs/gateways.md as written (issue 30): each block marked
// `<!-- <doc>: <name> -->` just above it runs here, its placeholders given as the environment it
// reads, against an authgate listening on 127.0.0.1: the token exchange in Node, Python and curl,
// the Kubernetes workload's Node and shell, the GitHub Actions step, and the gateway
// configurations in a real nginx and Caddy. Neither a Kubernetes cluster nor GitHub is reachable
// here: a stand-in issuer on 127.0.0.1 signs tokens of their shape (their claims, RS256) and
// serves their discovery document, JWKS and (GitHub's) ID token request.

const ROOT = join(import.meta.dirname, '..')
const FENCE = '`'.repeat(3)
const execFileAsync = promisify(execFile)

const PAYMENTS = 'https://payments.example.com'
const ORDERS = 'https://orders.example.com'
const LEDGER = 'https://ledger.example.com'
const DEPLOY = 'https://deploy.example.com'
const EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange'
const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token'
/** The subjects the docs' clients list. */
const SERVICE_ACCOUNT = 'system:serviceaccount:shop:reports'
const MAIN_BRANCH = 'repo:octo-org/octo-repo:ref:refs/heads/main'
/** What a GitHub runner holds to ask for its ID token (ACTIONS_ID_TOKEN_REQUEST_TOKEN), here. */
const REQUEST_TOKEN = 'runner-request-token'

const present = (bin: string, args = ['--version']): boolean => spawnSync(bin, args).status === 0
const hasCurl = present('curl')
const hasJq = present('jq')
const CADDY = '/usr/bin/caddy'
const hasCaddy = existsSync(CADDY)

/** The environment of a child: what finds its interpreter (PATH, pyenv's), and the variables the snippet reads. */
function childEnv (vars: Record<string, string>): Record<string, string> {
  const kept = ['PATH', 'HOME', 'PYENV_ROOT', 'PYENV_VERSION', 'LANG', 'TMPDIR']
  return { ...Object.fromEntries(kept.flatMap((name) => process.env[name] === undefined ? [] : [[name, process.env[name]!]])), ...vars }
}
const pythonWithRequests = spawnSync('python3', ['-c', 'import requests'], { env: childEnv({}) }).status === 0

/** The blocks of docs/`doc` marked `<!-- <doc>: <name> -->` on the line above their fence, by name. */
function blocksOf (doc: string): Map<string, string> {
  const text = readFileSync(join(ROOT, 'docs', doc), 'utf8')
  const marked = new RegExp(`^<!-- ${doc.replaceAll('.', '\\.')}: ([a-z0-9-]+) -->\\n${FENCE}[a-z]*\\n([\\s\\S]*?)^${FENCE}$`, 'gm')
  return new Map([...text.matchAll(marked)].map(([, name, code]) => [name!, code!]))
}
const S2S = blocksOf('service-to-service.md')
const GATEWAYS = blocksOf('gateways.md')

function block (blocks: Map<string, string>, name: string): string {
  const code = blocks.get(name)
  if (code === undefined) throw new Error(`no block marked ${name}`)
  return code
}

/** `code` with every `from` replaced: a doc that no longer has it fails here rather than run unchanged. */
function placed (code: string, from: string, to: string): string {
  if (!code.includes(from)) throw new Error(`the block has no ${JSON.stringify(from)}`)
  return code.replaceAll(from, to)
}

interface Ran { code: number, stdout: string, stderr: string }

/** A child run to its end (a hang: WAIT_MS, then an error), with only `vars` and what finds the interpreter in its environment. */
async function runChild (file: string, args: string[], vars: Record<string, string>): Promise<Ran> {
  try {
    const { stdout, stderr } = await execFileAsync(file, args, { env: childEnv(vars), timeout: WAIT_MS })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const failed = error as { code?: unknown, stdout?: string, stderr?: string }
    // A timeout or a binary that would not start has no exit code: that is the test's failure, not the snippet's.
    if (typeof failed.code !== 'number') throw error
    return { code: failed.code, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' }
  }
}
const runNode = (code: string, vars: Record<string, string>): Promise<Ran> => runChild(process.execPath, ['--input-type=module', '-e', code], vars)
const runPython = (code: string, vars: Record<string, string>): Promise<Ran> => runChild('python3', ['-c', code], vars)
// As GitHub runs a step with `shell: bash`.
const runBash = (code: string, vars: Record<string, string>): Promise<Ran> => runChild('bash', ['--noprofile', '--norc', '-eo', 'pipefail', '-c', code], vars)

/** What a snippet printed, trimmed; a failure that shows its stderr when it did not exit 0. */
function printed (t: Test, ran: Ran): string {
  if (ran.code !== 0) t.fail(`exited ${ran.code}: ${ran.stderr}`)
  return ran.stdout.trim()
}

/** authgate listening on a port of its own, PUBLIC_URL (and so the issuer) its address; real time, as the stand-in issuer signs with it. */
async function authgate (t: Test) {
  const port = await freePort()
  const base = `http://${HOST}:${port}`
  const app = await build(t, { env: { PUBLIC_URL: base }, clock: Object.assign(new TestClock(), { now: () => new Date() }) })
  await app.listen({ host: HOST, port })
  return { app, base, port }
}

/** POST /oauth/token over HTTP: the status and the JSON answer. */
async function tokenRequest (base: string, form: Record<string, string>, headers: Record<string, string> = {}): Promise<{ status: number, body: Record<string, any> }> {
  const res = await fetch(`${base}/oauth/token`, { method: 'POST', headers, body: new URLSearchParams(form), signal: AbortSignal.timeout(WAIT_MS) })
  return { status: res.status, body: await res.json() as Record<string, any> }
}

/** The token `client` gets for `userToken` toward payments, as the docs' examples ask it. */
async function exchanged (base: string, client: { id: string, secret: string }, userToken: string): Promise<string> {
  const { status, body } = await tokenRequest(base, {
    grant_type: EXCHANGE_GRANT, subject_token: userToken, subject_token_type: ACCESS_TOKEN_TYPE, audience: PAYMENTS, scope: 'payments:charge'
  }, { authorization: basic(client.id, client.secret) })
  if (status !== 200) throw new Error(`exchange: ${status} ${JSON.stringify(body)}`)
  return body.access_token as string
}

/** Waits until `url` answers over HTTP, or fails with what the gateway said. */
async function answering (url: string, child: ChildProcess, output: () => Promise<string>): Promise<void> {
  const deadline = Date.now() + WAIT_MS
  // The gateway itself on its port (listensOn): the port answering may be another test's server that took it first.
  const port = Number(new URL(url).port)
  while (!(await listensOn(child.pid, port) && await fetch(url, { signal: AbortSignal.timeout(WAIT_MS) }).then(() => true, () => false))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the gateway did not answer at ${url}: ${await output()}`)
    await sleep(50)
  }
}

/** nginx with `server` (a server block's contents, its listen line added) on a port of its own; stopped by its pid. */
async function startNginx (t: Test, server: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'authgate-s2s-nginx-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const port = await freePort()
  const conf = join(dir, 'nginx.conf')
  await writeFile(conf, nginxConfig(dir, `listen ${HOST}:${port};\n${server}`))
  const child = spawn(nginxBinary!, ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')], { stdio: 'ignore' })
  t.teardown(() => stop(child, 'SIGTERM'))
  const url = `http://${HOST}:${port}`
  await answering(url, child, () => readFile(join(dir, 'error.log'), 'utf8').catch(() => ''))
  return url
}

/** Caddy with the site block `site`, addressed at a port of its own, everything it writes in a temporary folder; stopped by its pid. */
async function startCaddy (t: Test, site: (address: string) => string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'authgate-s2s-caddy-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const port = await freePort()
  const url = `http://${HOST}:${port}`
  const conf = join(dir, 'Caddyfile')
  await writeFile(conf, `{\n  admin off\n  auto_https off\n  storage file_system ${join(dir, 'data')}\n}\n${site(url)}`)
  const env = { ...process.env, HOME: dir, XDG_DATA_HOME: join(dir, 'xdg-data'), XDG_CONFIG_HOME: join(dir, 'xdg-config') }
  const child = spawn(CADDY, ['run', '--config', conf, '--adapter', 'caddyfile'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  t.teardown(() => stop(child, 'SIGTERM'))
  await answering(url, child, async () => output)
  return url
}

/** A request through a gateway: its status, and the headers the upstream echoed (none when it was not called). */
async function through (url: string, headers: Record<string, string>, upstream: Upstream): Promise<{ status: number, saw: IncomingHttpHeaders | undefined }> {
  const before = upstream.saw.length
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(WAIT_MS) })
  await res.arrayBuffer()
  return { status: res.status, saw: upstream.saw.length > before ? upstream.saw.at(-1) : undefined }
}

/** The names of the X-Auth-* headers the upstream received, spelt with underscores or not. */
const actorHeaders = (saw: IncomingHttpHeaders | undefined): string[] => Object.keys(saw ?? {}).filter((name) => name.replaceAll('_', '-') === 'x-auth-actor')

interface Issuer {
  url: string
  /** A token of this issuer, RS256 by the key of its JWKS. */
  sign: (claims: Record<string, unknown>) => Promise<string>
  /** The audiences asked at its GitHub-like ID token request, in order. */
  audiencesAsked: string[]
  /** The subject of the ID tokens it gives. */
  githubSubject: string
}

/**
 * The stand-in of a Kubernetes API server's issuer and of GitHub's: an RSA key, its JWKS at
 * /openid/v1/jwks (Kubernetes' path), the discovery document naming it (unless `discovery` is
 * false: a cluster whose discovery authgate may not read), and GitHub's ID token request at
 * /idtoken (a runner's bearer, `audience` in the query, the token in `value`). Closed at teardown.
 */
async function standInIssuer (t: Test, { discovery = true } = {}): Promise<Issuer> {
  const { publicKey, privateKey } = await generateKeyPair('RS256')
  const kid = randomUUID()
  const jwk = { ...await exportJWK(publicKey), kid, alg: 'RS256', use: 'sig' }
  const sign = async (claims: Record<string, unknown>): Promise<string> => await new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid }).sign(privateKey)
  const issuer: Issuer = { url: '', sign, audiencesAsked: [], githubSubject: MAIN_BRANCH }
  const server = createServer((req, res) => {
    const json = (status: number, body: unknown): void => { res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body)) }
    const at = new URL(req.url ?? '/', issuer.url)
    if (at.pathname === '/.well-known/openid-configuration' && discovery) {
      return json(200, { issuer: issuer.url, jwks_uri: `${issuer.url}/openid/v1/jwks`, response_types_supported: ['id_token'], subject_types_supported: ['public'], id_token_signing_alg_values_supported: ['RS256'] })
    }
    if (at.pathname === '/openid/v1/jwks') return json(200, { keys: [jwk] })
    if (at.pathname === '/idtoken' && req.headers.authorization === `bearer ${REQUEST_TOKEN}`) {
      const audience = at.searchParams.get('audience') ?? 'https://github.com/octo-org'
      issuer.audiencesAsked.push(audience)
      sign(githubClaims(issuer.url, audience, issuer.githubSubject)).then((value) => json(200, { value }), () => json(500, {}))
      return
    }
    json(at.pathname === '/idtoken' ? 401 : 404, { message: 'no' })
  }).listen(0, HOST)
  await once(server, 'listening')
  issuer.url = `http://${HOST}:${(server.address() as AddressInfo).port}`
  t.teardown(async () => {
    server.closeAllConnections()
    server.close()
    await once(server, 'close')
  })
  return issuer
}

const nowS = (): number => Math.floor(Date.now() / 1000)

/** The claims of a Kubernetes projected service-account token for `audience`. */
function kubernetesClaims (issuer: string, audience: string, subject = SERVICE_ACCOUNT, expirationSeconds = 600): Record<string, unknown> {
  const iat = nowS()
  const [, , namespace, name] = subject.split(':')
  return {
    aud: [audience],
    exp: iat + expirationSeconds,
    iat,
    nbf: iat,
    iss: issuer,
    jti: randomUUID(),
    sub: subject,
    'kubernetes.io': { namespace, node: { name: 'node-1', uid: randomUUID() }, pod: { name: `${name}-5d8c7b9f4-x2k8p`, uid: randomUUID() }, serviceaccount: { name, uid: randomUUID() } }
  }
}

/** The claims of a GitHub Actions OIDC token for `audience`. */
function githubClaims (issuer: string, audience: string, subject: string): Record<string, unknown> {
  const iat = nowS()
  return {
    jti: randomUUID(),
    sub: subject,
    aud: audience,
    ref: 'refs/heads/main',
    ref_type: 'branch',
    repository: 'octo-org/octo-repo',
    repository_owner: 'octo-org',
    event_name: 'push',
    workflow: 'deploy',
    runner_environment: 'github-hosted',
    iss: issuer,
    nbf: iat,
    iat,
    exp: iat + 300
  }
}

t.test('the docs mark every block this test runs', async (t) => {
  t.same([...S2S.keys()].sort(), [
    'exchange-actor-curl', 'exchange-curl', 'exchange-node', 'exchange-python', 'exchanged-claims',
    'github-workflow', 'k8s-curl', 'k8s-deployment', 'k8s-node', 'nginx-payments'
  ])
  t.same([...GATEWAYS.keys()].sort(), ['caddy', 'nginx'])
})

t.test('acting for a user: the exchange examples of docs/service-to-service.md', async (t) => {
  const { app, base } = await authgate(t)
  const { client: orders, secret } = await app.clients.create({ name: 'orders', scopes: ['payments:charge'], audiences: [ORDERS], exchangeAudiences: [PAYMENTS] })
  const { access, user } = await login(app)
  const vars = { AUTHGATE_URL: base, CLIENT_ID: orders.id, CLIENT_SECRET: secret, USER_TOKEN: access }

  /** The claims of a token for payments that orders holds for the user. */
  function actsForTheUser (t: Test, token: string): Record<string, unknown> {
    const claims = claimsOf(token)
    t.equal(claims.sub, String(user.id), 'sub is the user')
    t.same(claims.act, { sub: orders.id }, 'act.sub is the client')
    t.equal(claims.client_id, orders.id)
    t.equal(claims.user_id, user.id)
    t.equal(claims.sid, claimsOf(access).sid, 'the user\'s session')
    t.equal(claims.aud, PAYMENTS)
    t.equal(claims.scope, 'payments:charge')
    t.equal(claims.gty, EXCHANGE_GRANT)
    t.ok((claims.exp as number) <= (claimsOf(access).exp as number), 'no later than the user\'s token')
    return claims
  }

  t.test('Node, with fetch', async (t) => {
    actsForTheUser(t, printed(t, await runNode(block(S2S, 'exchange-node'), vars)))
  })

  t.test('Python, with requests', { skip: !pythonWithRequests && 'python3 with requests is not installed (Debian\'s python3-requests)' }, async (t) => {
    actsForTheUser(t, printed(t, await runPython(block(S2S, 'exchange-python'), vars)))
  })

  t.test('curl, and the answer RFC 8693 §2.2.1 shapes', { skip: !hasCurl && 'no curl' }, async (t) => {
    const answer = JSON.parse(printed(t, await runBash(block(S2S, 'exchange-curl'), vars)) || '{}')
    t.match(answer, { issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer', scope: 'payments:charge', expires_in: Number })
    t.equal(answer.refresh_token, undefined, 'no refresh token')
    actsForTheUser(t, answer.access_token)
  })

  t.test('the claims the doc shows are the token\'s', async (t) => {
    const shown = JSON.parse(block(S2S, 'exchanged-claims')) as Record<string, unknown>
    const claims = actsForTheUser(t, await exchanged(base, { id: orders.id, secret }, access))
    t.same(Object.keys(shown).sort(), Object.keys(claims).sort())
    t.equal(shown.gty, claims.gty)
  })

  t.test('the actor token: a client with no client authentication names itself with its own token for authgate', { skip: !hasCurl && 'no curl' }, async (t) => {
    const reports = await app.clients.create({ name: 'reports', scopes: ['payments:charge'], audiences: [LEDGER, app.config.JWT_ISSUER], exchangeAudiences: [PAYMENTS] })
    const own = await tokenRequest(base, { grant_type: 'client_credentials', audience: base }, { authorization: basic(reports.client.id, reports.secret) })
    t.equal(own.status, 200, 'AUTHGATE_URL is the issuer: the audience of its own token')
    const answer = JSON.parse(printed(t, await runBash(block(S2S, 'exchange-actor-curl'), { AUTHGATE_URL: base, USER_TOKEN: access, SERVICE_TOKEN: own.body.access_token })) || '{}')
    const claims = claimsOf(answer.access_token)
    t.equal(claims.sub, String(user.id))
    t.same(claims.act, { sub: reports.client.id })
    t.equal(claims.aud, PAYMENTS)
  })
})

t.test('acting for a user at nginx: the payments location of docs/service-to-service.md', { skip: nginxBinary === undefined && 'no nginx binary on this machine (CI installs Debian\'s nginx)' }, async (t) => {
  const { app, base } = await authgate(t)
  const orders = await app.clients.create({ name: 'orders', scopes: ['payments:charge'], audiences: [ORDERS], exchangeAudiences: [PAYMENTS] })
  const payments = await app.clients.create({ name: 'payments', scopes: ['payments:charge'], audiences: [PAYMENTS] })
  const upstream = await echoUpstream(t)
  const location = placed(placed(block(S2S, 'nginx-payments'), 'http://authgate:3000', base), 'http://payments:8080', upstream.url)
  const gateway = `${await startNginx(t, location)}/payments/charges`
  const { access, user } = await login(app)

  t.test('an exchanged token: the user, the client acting, its scope; a client-sent X-Auth-Actor gives way', async (t) => {
    const token = await exchanged(base, { id: orders.client.id, secret: orders.secret }, access)
    const { status, saw } = await through(gateway, { authorization: `Bearer ${token}`, 'x-auth-actor': 'somebody-else', X_Auth_Actor: 'somebody-else' }, upstream)
    t.equal(status, 200)
    t.equal(saw?.['x-auth-user-id'], String(user.id))
    t.equal(saw?.['x-auth-client-id'], orders.client.id)
    t.equal(saw?.['x-auth-scope'], 'payments:charge')
    t.equal(saw?.['x-auth-actor'], orders.client.id, 'one value: authgate\'s')
    t.same(actorHeaders(saw), ['x-auth-actor'])
  })

  t.test('payments\' own service token: no user, no actor, whatever the client sent', async (t) => {
    const own = await tokenRequest(base, { grant_type: 'client_credentials' }, { authorization: basic(payments.client.id, payments.secret) })
    const { status, saw } = await through(gateway, { authorization: `Bearer ${own.body.access_token}`, 'x-auth-actor': orders.client.id, 'x-auth-user-id': String(user.id) }, upstream)
    t.equal(status, 200)
    t.equal(saw?.['x-auth-client-id'], payments.client.id)
    t.equal(saw?.['x-auth-user-id'], undefined)
    t.same(actorHeaders(saw), [])
  })

  t.test('the user\'s own token: 401, payments is never called', async (t) => {
    const { status, saw } = await through(gateway, { authorization: `Bearer ${access}` }, upstream)
    t.equal(status, 401)
    t.equal(saw, undefined)
  })

  t.test('once orders may no longer exchange toward payments: 401', async (t) => {
    const token = await exchanged(base, { id: orders.client.id, secret: orders.secret }, access)
    t.equal((await through(gateway, { authorization: `Bearer ${token}` }, upstream)).status, 200)
    await app.clients.update(orders.client.id, { exchangeAudiences: [] })
    const { status, saw } = await through(gateway, { authorization: `Bearer ${token}` }, upstream)
    t.equal(status, 401)
    t.equal(saw, undefined)
  })
})

t.test('docs/gateways.md: a client-sent X-Auth-Actor never reaches the app; an exchanged token never passes a check without audience', async (t) => {
  const { app, base, port } = await authgate(t)
  const orders = await app.clients.create({ name: 'orders', scopes: ['payments:charge'], audiences: [ORDERS], exchangeAudiences: [PAYMENTS] })
  const forged = { 'X-Auth-Actor': orders.client.id, X_Auth_Actor: orders.client.id }

  async function proveIt (t: Test, gateway: string, upstream: Upstream): Promise<void> {
    const { access, user } = await login(app)
    const mine = await through(`${gateway}/orders`, { authorization: `Bearer ${access}`, ...forged }, upstream)
    t.equal(mine.status, 200)
    t.equal(mine.saw?.['x-auth-user-id'], String(user.id))
    t.same(actorHeaders(mine.saw), [], 'no X-Auth-Actor, in any spelling')
    const token = await exchanged(base, { id: orders.client.id, secret: orders.secret }, access)
    const acting = await through(`${gateway}/orders`, { authorization: `Bearer ${token}` }, upstream)
    t.equal(acting.status, 401, 'an exchanged token needs the audience named')
    t.equal(acting.saw, undefined)
  }

  t.test('nginx', { skip: nginxBinary === undefined && 'no nginx binary on this machine (CI installs Debian\'s nginx)' }, async (t) => {
    const upstream = await echoUpstream(t)
    const server = placed(placed(block(GATEWAYS, 'nginx'), 'http://authgate:3000', base), 'http://app:8080', upstream.url)
    await proveIt(t, await startNginx(t, server), upstream)
  })

  t.test('Caddy', { skip: !hasCaddy && `no Caddy at ${CADDY} (Debian's caddy package)` }, async (t) => {
    const upstream = await echoUpstream(t)
    const site = (address: string): string => placed(placed(placed(block(GATEWAYS, 'caddy'), 'example.com {', `${address} {`), 'authgate:3000', `${HOST}:${port}`), 'app:8080', `${HOST}:${upstream.port}`)
    await proveIt(t, await startCaddy(t, site), upstream)
  })
})

t.test('without secrets: a Kubernetes service account (a stand-in cluster issuer)', async (t) => {
  const { app, base } = await authgate(t)
  const cluster = await standInIssuer(t)
  const { client: reports } = await app.clients.create({
    name: 'reports',
    scopes: ['ledger:read'],
    audiences: [LEDGER],
    tokenTtlS: 600,
    trust: { issuer: cluster.url, jwksUri: null, subjects: [SERVICE_ACCOUNT], alg: 'RS256' }
  })
  const dir = await mkdtemp(join(tmpdir(), 'authgate-s2s-projected-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const tokenFile = join(dir, 'token')
  const vars = { AUTHGATE_URL: base, CLIENT_ID: reports.id, TOKEN_FILE: tokenFile }
  /** What the kubelet does: a new projected token for authgate in the file. */
  const project = async (issuer = cluster, subject = SERVICE_ACCOUNT): Promise<void> => {
    await writeFile(tokenFile, await issuer.sign(kubernetesClaims(issuer.url, base, subject)))
  }
  /** The claims of the workload client's own token. */
  function theClientsOwn (t: Test, token: string, id = reports.id): void {
    const claims = claimsOf(token)
    t.equal(claims.sub, id)
    t.equal(claims.client_id, id)
    t.equal(claims.gty, 'client_credentials')
    t.equal(claims.aud, LEDGER)
    t.equal(claims.scope, 'ledger:read')
  }

  t.test('the Deployment: a projected token for authgate, where the workload reads it, for no longer than the client\'s --ttl', async (t) => {
    const deployment = parse(block(S2S, 'k8s-deployment')) as any
    const pod = deployment.spec.template.spec
    const container = pod.containers[0]
    const env = Object.fromEntries((container.env as Array<{ name: string, value: string }>).map(({ name, value }) => [name, value]))
    const volume = (pod.volumes as any[]).find((v) => v.projected !== undefined)
    const projected = volume.projected.sources[0].serviceAccountToken
    t.equal(projected.audience, env.AUTHGATE_URL, 'the token is for authgate, where the workload sends it')
    t.ok(projected.expirationSeconds >= 600 && projected.expirationSeconds <= 3600, 'expirationSeconds said, 600 to 3600')
    const mount = (container.volumeMounts as Array<{ name: string, mountPath: string }>).find((m) => m.name === volume.name)
    t.equal(`${mount?.mountPath}/${projected.path}`, env.TOKEN_FILE, 'TOKEN_FILE is the projected file')
    t.match(block(S2S, 'k8s-node'), `process.env.TOKEN_FILE ?? '${env.TOKEN_FILE}'`, 'the Node snippet reads it by default')
    const doc = readFileSync(join(ROOT, 'docs', 'service-to-service.md'), 'utf8')
    const ttl = new RegExp(`--subject ${SERVICE_ACCOUNT} \\\\\\n.* --ttl (\\d+)m\\n`).exec(doc)?.[1]
    t.ok(Number(ttl) * 60 >= projected.expirationSeconds, `the client's --ttl (${ttl}m) is at least expirationSeconds (${projected.expirationSeconds})`)
    t.equal(pod.serviceAccountName, SERVICE_ACCOUNT.split(':')[3])
    t.equal(deployment.metadata.namespace, SERVICE_ACCOUNT.split(':')[2], 'the --subject is the Deployment\'s service account')
  })

  t.test('the shell POST: the client\'s own token for the projected one', { skip: !hasCurl && 'no curl' }, async (t) => {
    await project()
    const answer = JSON.parse(printed(t, await runBash(block(S2S, 'k8s-curl'), vars)) || '{}')
    t.match(answer, { token_type: 'Bearer', expires_in: 600, scope: 'ledger:read' })
    theClientsOwn(t, answer.access_token)
  })

  t.test('the Node workload: a token for the file\'s; the same file again is refused, each projected token being taken once', async (t) => {
    await project()
    theClientsOwn(t, printed(t, await runNode(block(S2S, 'k8s-node'), vars)))
    const again = await runNode(block(S2S, 'k8s-node'), vars)
    t.not(again.code, 0)
    t.match(again.stderr, 'invalid_grant: The assertion is not taken: it was used already')
    // The kubelet's next token is taken.
    await project()
    theClientsOwn(t, printed(t, await runNode(block(S2S, 'k8s-node'), vars)))
  })

  t.test('another service account of the cluster, a token for the API server, one made valid for a year: refused', async (t) => {
    await project(cluster, 'system:serviceaccount:shop:billing')
    const other = await runNode(block(S2S, 'k8s-node'), vars)
    t.not(other.code, 0)
    t.match(other.stderr, 'invalid_grant: The assertion is not taken: it is not a token of the issuer and subject the client trusts')
    await writeFile(tokenFile, await cluster.sign(kubernetesClaims(cluster.url, 'https://kubernetes.default.svc.cluster.local')))
    const forTheApiServer = await runNode(block(S2S, 'k8s-node'), vars)
    t.not(forTheApiServer.code, 0)
    t.match(forTheApiServer.stderr, 'invalid_grant: The assertion is not taken: its aud must be authgate\'s token endpoint')
    // What --service-account-extend-token-expiration makes of a token asked for 3607 s.
    await writeFile(tokenFile, await cluster.sign(kubernetesClaims(cluster.url, base, SERVICE_ACCOUNT, 365 * 86_400)))
    const longer = await runNode(block(S2S, 'k8s-node'), vars)
    t.not(longer.code, 0)
    t.match(longer.stderr, 'invalid_grant: The assertion is not taken: it expires more than 3600 s ahead')
  })

  t.test('a cluster whose discovery authgate cannot read: 503 without --trust-jwks-uri, taken with it', async (t) => {
    const closed = await standInIssuer(t, { discovery: false })
    const blind = await app.clients.create({ name: 'blind', scopes: ['ledger:read'], audiences: [LEDGER], trust: { issuer: closed.url, jwksUri: null, subjects: [SERVICE_ACCOUNT], alg: 'RS256' } })
    await project(closed)
    const refused = await runNode(block(S2S, 'k8s-node'), { ...vars, CLIENT_ID: blind.client.id })
    t.not(refused.code, 0)
    t.match(refused.stderr, 'upstream_unavailable')
    const keyed = await app.clients.create({ name: 'keyed', scopes: ['ledger:read'], audiences: [LEDGER], trust: { issuer: closed.url, jwksUri: `${closed.url}/openid/v1/jwks`, subjects: [SERVICE_ACCOUNT], alg: 'RS256' } })
    await project(closed)
    theClientsOwn(t, printed(t, await runNode(block(S2S, 'k8s-node'), { ...vars, CLIENT_ID: keyed.client.id })), keyed.client.id)
  })
})

t.test('without secrets: a GitHub Actions job (a stand-in of GitHub\'s issuer)', async (t) => {
  const { app, base } = await authgate(t)
  const github = await standInIssuer(t)
  const { client: deploy } = await app.clients.create({
    name: 'deploy',
    scopes: ['deploy:write'],
    audiences: [DEPLOY],
    tokenTtlS: 900,
    trust: { issuer: github.url, jwksUri: null, subjects: [MAIN_BRANCH, 'repo:octo-org/octo-repo:environment:production'], alg: 'RS256' }
  })
  const workflow = parse(block(S2S, 'github-workflow')) as any
  const job = workflow.jobs.deploy

  t.test('the workflow may ask for its ID token, and asks it for authgate', async (t) => {
    t.equal(workflow.permissions['id-token'], 'write')
    t.equal(job.env.AUTHGATE_URL, 'https://auth.example.com')
    t.equal(job.steps[0].shell, 'bash')
    t.match(job.steps[0].run, '"$ACTIONS_ID_TOKEN_REQUEST_URL&audience=$AUTHGATE_URL"')
  })

  t.test('the step, run as GitHub runs it: the client\'s own token in GITHUB_ENV, masked in the log', { skip: (!hasCurl || !hasJq) && 'no curl or jq (GitHub\'s runners have both)' }, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'authgate-s2s-github-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const githubEnv = join(dir, 'github_env')
    await writeFile(githubEnv, '')
    const ran = await runBash(job.steps[0].run, {
      AUTHGATE_URL: base,
      CLIENT_ID: deploy.id,
      ACTIONS_ID_TOKEN_REQUEST_URL: `${github.url}/idtoken?api-version=2.0`,
      ACTIONS_ID_TOKEN_REQUEST_TOKEN: REQUEST_TOKEN,
      GITHUB_ENV: githubEnv
    })
    const log = printed(t, ran)
    t.same(github.audiencesAsked, [base], 'GitHub was asked for a token for authgate')
    const token = /^DEPLOY_TOKEN=(.+)$/m.exec(await readFile(githubEnv, 'utf8'))?.[1] ?? ''
    t.equal(log, `::add-mask::${token}`)
    const claims = claimsOf(token)
    t.equal(claims.sub, deploy.id)
    t.equal(claims.aud, DEPLOY)
    t.equal(claims.scope, 'deploy:write')
    t.equal(claims.exp as number - (claims.iat as number), 900, 'the client\'s --ttl')
  })

  t.test('the subject is exact: another branch\'s job is refused', async (t) => {
    github.githubSubject = 'repo:octo-org/octo-repo:ref:refs/heads/feature'
    const res = await fetch(`${github.url}/idtoken?api-version=2.0&audience=${base}`, { headers: { authorization: `bearer ${REQUEST_TOKEN}` }, signal: AbortSignal.timeout(WAIT_MS) })
    const { value } = await res.json() as { value: string }
    const { status, body } = await tokenRequest(base, { grant_type: JWT_BEARER_GRANT, client_id: deploy.id, assertion: value })
    t.equal(status, 400)
    t.equal(body.error, 'invalid_grant')
    t.match(body.error_description, 'it is not a token of the issuer and subject the client trusts')
  })
})

t.test('without secrets: another authgate as the issuer', async (t) => {
  const here = await authgate(t)
  const there = await authgate(t)
  // At the other authgate: a client that may have tokens for this one (its issuer).
  const away = await there.app.clients.create({ name: 'reports', scopes: [], audiences: [here.app.config.JWT_ISSUER], tokenTtlS: 300 })
  const { client } = await here.app.clients.create({
    name: 'reports-from-a',
    scopes: ['ledger:read'],
    audiences: [LEDGER],
    trust: { issuer: there.app.config.JWT_ISSUER, jwksUri: null, subjects: [away.client.id], alg: 'ES256' }
  })
  const theirs = await tokenRequest(there.base, { grant_type: 'client_credentials' }, { authorization: basic(away.client.id, away.secret) })
  t.equal(theirs.status, 200)
  const header = JSON.parse(Buffer.from(theirs.body.access_token.split('.')[0], 'base64url').toString()) as { alg: string }
  t.equal(header.alg, 'ES256', 'authgate\'s default algorithm, the --trust-alg of the doc')
  const mine = await tokenRequest(here.base, { grant_type: JWT_BEARER_GRANT, client_id: client.id, assertion: theirs.body.access_token })
  t.equal(mine.status, 200)
  t.equal(claimsOf(mine.body.access_token).sub, client.id)
  const again = await tokenRequest(here.base, { grant_type: JWT_BEARER_GRANT, client_id: client.id, assertion: theirs.body.access_token })
  t.equal(again.status, 400)
  t.equal(again.body.error, 'invalid_grant')
  t.match(again.body.error_description, 'it was used already')
})
