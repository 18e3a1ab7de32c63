import fastifyJwt, { type JwtHeader, type TokenOrHeader } from '@fastify/jwt'
import Fastify, { type FastifyRequest } from 'fastify'
import buildGetJwks from 'get-jwks'
import { exportJWK, exportPKCS8, generateKeyPair } from 'jose'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import type { IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import * as oauth from 'oauth4webapi'
import * as client from 'openid-client'
import t, { type Test } from 'tap'
import { echoUpstream, HOST, nginxBinary, nginxConfig, stop, WAIT_MS } from './gateway-proof.ts'
import { build, login, TestClock } from './helper.ts'
import { freePort } from './server-process.ts'

// Service identities proven with clients nobody here wrote (issue 16): openid-client's
// client credentials grant from discovery, oauth4webapi's RFC 9068 validator, a Fastify service
// with @fastify/jwt + get-jwks, and nginx auth_request requiring a scope; all on 127.0.0.1.
// Issue 26: private_key_jwt as Authlib (Python) and oauth4webapi sign it, for an hour.

const ORDERS = 'https://orders.example.test'
const BILLING = 'https://billing.example.test'

/** authgate listening on a port of its own, PUBLIC_URL its address (discovery matches the issuer to it), and two clients. */
async function authgate (t: Test) {
  const port = await freePort()
  const base = `http://${HOST}:${port}`
  // Real time for the assertions these clients sign with their own clocks.
  const app = await build(t, { env: { PUBLIC_URL: base }, clock: Object.assign(new TestClock(), { now: () => new Date() }) })
  await app.listen({ host: HOST, port })
  const orders = await app.clients.create({ name: 'orders-reader', scopes: ['orders:read', 'orders:write'], audiences: [ORDERS] })
  const billing = await app.clients.create({ name: 'billing', scopes: ['billing:read'], audiences: [BILLING] })
  return { app, base, orders, billing }
}

t.test('service tokens in the hands of third-party clients and verifiers', async (t) => {
  const { app, base, orders, billing } = await authgate(t)

  t.test('openid-client: discovery, then clientCredentialsGrant with each client authentication method', async (t) => {
    for (const algorithm of ['oidc', 'oauth2'] as const) {
      const config = await client.discovery(new URL(base), orders.client.id, orders.secret, undefined, { algorithm, execute: [client.allowInsecureRequests] })
      t.equal(config.serverMetadata().token_endpoint, `${base}/oauth/token`, `${algorithm} discovery names the token endpoint`)
      const tokens = await client.clientCredentialsGrant(config, { scope: 'orders:read' })
      t.match(tokens, { token_type: 'bearer', scope: 'orders:read', expires_in: 600 }, `${algorithm}: client_secret_post, openid-client's default`)
      t.equal(tokens.refresh_token, undefined)
    }
    const basic = await client.discovery(new URL(base), orders.client.id, undefined, client.ClientSecretBasic(orders.secret), { execute: [client.allowInsecureRequests] })
    t.match(await client.clientCredentialsGrant(basic, { resource: ORDERS }), { scope: 'orders:read orders:write' }, 'client_secret_basic, with a resource')
    const wrong = await client.discovery(new URL(base), orders.client.id, undefined, client.ClientSecretBasic('wrong'), { execute: [client.allowInsecureRequests] })
    // RFC 6749 §5.2: a client that authenticated with HTTP Basic gets 401 and a Basic challenge,
    // which openid-client reports as the challenge.
    await t.rejects(client.clientCredentialsGrant(wrong), { code: 'OAUTH_WWW_AUTHENTICATE_CHALLENGE', status: 401, cause: [{ scheme: 'basic' }] }, 'a wrong secret')
    await t.rejects(client.clientCredentialsGrant(basic, { scope: 'billing:read' }), { code: 'OAUTH_RESPONSE_BODY_ERROR', status: 400, error: 'invalid_scope' })

    // private_key_jwt: openid-client signs the assertion (aud: the issuer) with a key whose public half the client registered.
    const { publicKey, privateKey } = await generateKeyPair('ES256')
    const { client: signer } = await app.clients.create({ name: 'signer', scopes: ['orders:read'], audiences: [ORDERS], jwks: { keys: [{ ...await exportJWK(publicKey), kid: 'signer-1' }] } })
    const jwt = await client.discovery(new URL(base), signer.id, undefined, client.PrivateKeyJwt({ key: privateKey, kid: 'signer-1' }), { execute: [client.allowInsecureRequests] })
    t.match(await client.clientCredentialsGrant(jwt), { scope: 'orders:read' }, 'private_key_jwt')
    t.match(await client.clientCredentialsGrant(jwt), { scope: 'orders:read' }, 'each assertion with its own jti: a second grant works too')
  })

  t.test('private_key_jwt with an assertion of an hour, as Authlib signs it: oauth4webapi made to sign one', async (t) => {
    const { publicKey, privateKey } = await generateKeyPair('ES256')
    const { client: signer } = await app.clients.create({ name: 'hour-signer', scopes: ['orders:read'], audiences: [ORDERS], jwks: { keys: [{ ...await exportJWK(publicKey), kid: 'hour-1' }] } })
    const issuer = new URL(base)
    const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { [oauth.allowInsecureRequests]: true }))
    let exp = 0
    const auth = oauth.PrivateKeyJwt({ key: privateKey, kid: 'hour-1' }, {
      [oauth.modifyAssertion]: (_header, payload) => {
        payload.exp = (payload.iat as number) + 3600
        exp = payload.exp
      }
    })
    const res = await oauth.clientCredentialsGrantRequest(as, { client_id: signer.id }, auth, new URLSearchParams(), { [oauth.allowInsecureRequests]: true })
    const tokens = await oauth.processClientCredentialsResponse(as, { client_id: signer.id }, res)
    t.match(tokens, { token_type: 'bearer', scope: 'orders:read' })
    t.ok(exp > 0, 'the assertion was signed for an hour')
  })

  t.test('Authlib\'s PrivateKeyJWT (Python, exp = iat + 3600): a token; a wrong key: invalid_client saying why', { skip: authlibMissing }, async (t) => {
    const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true })
    const { client: signer } = await app.clients.create({ name: 'authlib', scopes: ['orders:read'], audiences: [ORDERS], jwks: { keys: [{ ...await exportJWK(publicKey), alg: 'ES256' }] } })
    const pem = await exportPKCS8(privateKey)
    const got = await authlibToken(`${base}/oauth/token`, signer.id, pem)
    t.match(got, { token: { token_type: 'Bearer', scope: 'orders:read', access_token: String } }, JSON.stringify(got))
    const assertion = got.assertion as { iat: number, exp: number }
    t.equal(assertion.exp - assertion.iat, 3600, 'Authlib signed it for an hour')
    const other = await generateKeyPair('ES256', { extractable: true })
    const refused = await authlibToken(`${base}/oauth/token`, signer.id, await exportPKCS8(other.privateKey))
    t.same(refused.error, { error: 'invalid_client', description: 'Client authentication failed: unknown client, or the client_assertion is not signed by a key of its JWKS.' })
  })

  t.test('oauth4webapi validateJwtAccessToken (RFC 9068) takes service tokens and users\' tokens, each for its audience', async (t) => {
    const issuer = new URL(base)
    const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', [oauth.allowInsecureRequests]: true }))
    const validate = (token: string, audience: string) => oauth.validateJwtAccessToken(as, new Request(`${base}/resource`, { headers: { authorization: `Bearer ${token}` } }), audience, { [oauth.allowInsecureRequests]: true })
    const service = (await postToken(base, orders.client.id, orders.secret)).access_token
    t.match(await validate(service, ORDERS), { client_id: orders.client.id, sub: orders.client.id, aud: ORDERS, scope: 'orders:read orders:write' })
    await t.rejects(validate(service, BILLING), 'another audience is refused')
    const { access } = await login(app)
    t.match(await validate(access, app.config.JWT_AUDIENCE), { client_id: 'authgate', iss: base }, 'a user\'s token passes too (client_id, sub, jti)')
  })

  t.test('a Fastify service with @fastify/jwt and get-jwks takes its own audience\'s tokens and refuses another\'s', async (t) => {
    const getJwks = buildGetJwks()
    const service = Fastify()
    t.teardown(() => service.close())
    await service.register(fastifyJwt, {
      decode: { complete: true },
      secret: (_request: FastifyRequest, token: TokenOrHeader) => {
        const { header } = token as { header: JwtHeader }
        return getJwks.getPublicKey({ kid: header.kid, alg: header.alg, domain: base })
      },
      verify: { algorithms: ['ES256'], allowedIss: base, allowedAud: ORDERS }
    })
    service.get('/orders', async (request, reply) => {
      const claims = await request.jwtVerify<{ client_id: string, scope: string }>().catch(() => null)
      if (claims === null || !claims.scope.split(' ').includes('orders:read')) return reply.code(401).send({ error: 'a token for orders with orders:read is required' })
      return { client_id: claims.client_id }
    })
    await service.listen({ host: HOST, port: 0 })
    const url = `http://${HOST}:${(service.server.address() as AddressInfo).port}/orders`
    const call = (token: string) => fetch(url, { headers: { authorization: `Bearer ${token}` } })
    const mine = await call((await postToken(base, orders.client.id, orders.secret)).access_token)
    t.equal(mine.status, 200)
    t.same(await mine.json(), { client_id: orders.client.id })
    t.equal((await call((await postToken(base, billing.client.id, billing.secret)).access_token)).status, 401, 'a token minted for billing is refused by orders')
    t.equal((await call((await login(app)).access)).status, 401, 'a user\'s token (JWT_AUDIENCE) is not for orders either')
  })

  t.test('nginx auth_request in front of a service requires its audience and a scope', { skip: nginxBinary === undefined && 'no nginx binary on this machine (CI installs Debian\'s nginx)' }, async (t) => {
    const gateway = await startNginx(t, Number(new URL(base).port))
    const reader = await app.clients.create({ name: 'reader', scopes: ['orders:read'], audiences: [ORDERS] })
    const writer = await app.clients.create({ name: 'writer', scopes: ['orders:write'], audiences: [ORDERS] })
    const through = (path: string, token: string) => fetch(`${gateway.url}${path}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(WAIT_MS) })
    const readToken = (await postToken(base, reader.client.id, reader.secret)).access_token
    const res = await through('/orders/1', readToken)
    t.equal(res.status, 200)
    t.match(gateway.upstreamSaw.at(-1), { 'x-auth-client-id': reader.client.id, 'x-auth-scope': 'orders:read' })
    const writeToken = (await postToken(base, writer.client.id, writer.secret)).access_token
    const refused = await through('/orders/1', writeToken)
    t.equal(refused.status, 403, 'a scope it lacks: 403 from the gateway')
    t.match(refused.headers.get('www-authenticate'), /error="insufficient_scope"/)
    t.equal((await through('/orders/1', (await postToken(base, billing.client.id, billing.secret)).access_token)).status, 401, 'a token for billing: 401')
    t.equal((await through('/orders/1', 'junk')).status, 401)
    t.equal(gateway.upstreamSaw.length, 1, 'only the allowed request reached the service')
  })
})

const PYTHON = '/usr/bin/python3'
const authlibMissing = spawnSync(PYTHON, ['-c', 'import authlib, requests, cryptography']).status !== 0
  ? `${PYTHON} cannot import authlib, requests and cryptography: apt-get install python3-authlib python3-requests`
  : false

// Authlib's own example of private_key_jwt (authlib.oauth2.rfc7523.PrivateKeyJWT), with ES256.
const AUTHLIB_CLIENT = `
import base64, json, sys
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT

token_endpoint, client_id, key = sys.argv[1], sys.argv[2], sys.stdin.read()
auth = PrivateKeyJWT(token_endpoint, alg='ES256')
signed = []
sign = auth.sign
auth.sign = lambda *args: signed.append(sign(*args)) or signed[-1]
session = OAuth2Session(client_id, key, token_endpoint_auth_method='private_key_jwt')
session.trust_env = False
session.register_client_auth_method(auth)
try:
    token = session.fetch_token(token_endpoint, grant_type='client_credentials')
    claims = signed[0].split(b'.')[1] if isinstance(signed[0], bytes) else signed[0].split('.')[1]
    claims = claims if isinstance(claims, str) else claims.decode()
    print(json.dumps({'token': dict(token), 'assertion': json.loads(base64.urlsafe_b64decode(claims + '=' * (-len(claims) % 4)))}))
except OAuthError as error:
    print(json.dumps({'error': {'error': error.error, 'description': error.description}}))
`

/** What Authlib's client gets at `tokenEndpoint` for the client `id` signing with `pem` (a process of its own: authgate answers in this one). */
async function authlibToken (tokenEndpoint: string, id: string, pem: string): Promise<Record<string, unknown>> {
  const python = spawn(PYTHON, ['-c', AUTHLIB_CLIENT, tokenEndpoint, id], { stdio: 'pipe', timeout: 60_000 })
  let stdout = ''
  let stderr = ''
  python.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  python.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  python.stdin.end(pem)
  const [code, signal] = await once(python, 'close') as [number | null, string | null]
  if (code !== 0) throw new Error(`Authlib's client failed (${code ?? signal}): ${stderr}`)
  return JSON.parse(stdout)
}

/** POST /oauth/token with client_secret_basic, as curl in docs/service-to-service.md does. */
async function postToken (base: string, id: string, secret: string): Promise<{ access_token: string }> {
  const res = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials'
  })
  if (res.status !== 200) throw new Error(`token: ${res.status} ${await res.text()}`)
  return await res.json() as { access_token: string }
}

/** nginx with the orders location of docs/service-to-service.md, before an upstream that echoes the headers it got; stopped by its pid. */
async function startNginx (t: Test, authgatePort: number): Promise<{ url: string, upstreamSaw: IncomingHttpHeaders[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'authgate-nginx-scope-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const upstream = await echoUpstream(t)
  const port = await freePort()
  const conf = join(dir, 'nginx.conf')
  await writeFile(conf, nginxConfig(dir, `
    listen ${HOST}:${port};
    location /orders/ {
      auth_request /_auth_orders;
      auth_request_set $auth_client_id $upstream_http_x_auth_client_id;
      auth_request_set $auth_scope $upstream_http_x_auth_scope;
      auth_request_set $auth_challenge $upstream_http_www_authenticate;
      add_header WWW-Authenticate $auth_challenge always;
      proxy_set_header X-Auth-Client-Id $auth_client_id;
      proxy_set_header X-Auth-Scope $auth_scope;
      proxy_pass ${upstream.url};
    }
    location = /_auth_orders {
      internal;
      proxy_pass http://${HOST}:${authgatePort}/api/auth/check?audience=${encodeURIComponent(ORDERS)}&scope=orders:read;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Authorization $http_authorization;
    }`))
  const child = spawn(nginxBinary!, ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')], { stdio: 'ignore' })
  t.teardown(() => stop(child, 'SIGTERM'))
  const deadline = Date.now() + WAIT_MS
  while (!await fetch(`http://${HOST}:${port}/`).then(() => true, () => false)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`nginx did not start: ${await readFile(join(dir, 'error.log'), 'utf8').catch(() => '')}`)
    await sleep(50)
  }
  return { url: `http://${HOST}:${port}`, upstreamSaw: upstream.saw }
}
