import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { createInterface } from 'node:readline'
import { serve } from '@hono/node-server'
import fastifyJwt, { type JwtHeader, type TokenOrHeader } from '@fastify/jwt'
import { createSigner } from 'fast-jwt'
import express, { type ErrorRequestHandler } from 'express'
import { expressjwt, type Request as JWTRequest } from 'express-jwt'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import buildGetJwks from 'get-jwks'
import { Hono } from 'hono'
import { jwk } from 'hono/jwk'
import type { JwtVariables } from 'hono/jwt'
import { createRemoteJWKSet, jwtVerify } from 'jose'
import jwksRsa from 'jwks-rsa'
import t, { type Test } from 'tap'
import { SecretBox } from '../src/lib/secret-box.ts'
import { loadSigningKeys, rotateSigningKey } from '../src/services/keys/signing-keys.ts'
import { build, claimsOf, login, SECRET_KEY } from './helper.ts'

/** What a verifier made of a token: its claims, or why it refused it. */
type Outcome = { claims: Record<string, unknown> } | { refused: string }
type Verify = (token: string) => Promise<Outcome>

const urlOf = (fastify: FastifyInstance) => `http://127.0.0.1:${(fastify.server.address() as AddressInfo).port}`

/** The Fastify service of docs/tokens.md: @fastify/jwt with authgate's public keys through get-jwks. */
async function ordersService (t: Test, authgateUrl: string, issuer: string, audience: string): Promise<Verify> {
  const getJwks = buildGetJwks()
  const orders = Fastify()
  t.teardown(() => orders.close())
  await orders.register(fastifyJwt, {
    decode: { complete: true },
    secret: (_request: FastifyRequest, token: TokenOrHeader) => {
      const { header } = token as { header: JwtHeader }
      return getJwks.getPublicKey({ kid: header.kid, alg: header.alg, domain: authgateUrl })
    },
    verify: { algorithms: ['ES256'], allowedIss: issuer, allowedAud: audience }
  })
  orders.get('/orders', async (request, reply) => {
    // A kid missing from the JWKS fails in get-jwks, before @fastify/jwt's 401s: one answer for all.
    const claims = await request.jwtVerify<{ token_type: string, user_id: number }>().catch(() => null)
    if (claims?.token_type !== 'access') return reply.code(401).send({ error: 'a valid access token is required' })
    return { user_id: claims.user_id }
  })
  await orders.listen({ host: '127.0.0.1', port: 0 })
  const ordersUrl = urlOf(orders)
  return async (token) => {
    const res = await fetch(`${ordersUrl}/orders`, { headers: { authorization: `Bearer ${token}` } })
    if (res.status === 200) return { claims: await res.json() as Record<string, unknown> }
    if (res.status === 401) return { refused: (await res.json() as { error: string }).error }
    throw new Error(`orders answered ${res.status}: ${await res.text()}`)
  }
}

/** The jose verifier of docs/tokens.md. */
function joseVerifier (authgateUrl: string, issuer: string, audience: string): Verify {
  // jose fetches the JWKS again for an unknown kid at most once per cooldownDuration (30 s by
  // default); 0 here so that the test need not wait after its rotation.
  const JWKS = createRemoteJWKSet(new URL(`${authgateUrl}/.well-known/jwks.json`), { cooldownDuration: 0 })
  return async (token) => {
    try {
      const { payload } = await jwtVerify(token, JWKS, { issuer, audience, typ: 'at+jwt', algorithms: ['ES256'] })
      if (payload.token_type !== 'access') return { refused: 'not an access token' }
      return { claims: payload }
    } catch (error) {
      return { refused: String(error) }
    }
  }
}

/** A service on 127.0.0.1 as a verifier: 200 gives the claims it answered, 401 why it refused. */
function overHttp (url: string): Verify {
  return async (token) => {
    const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } })
    if (res.status === 200) return { claims: await res.json() as Record<string, unknown> }
    if (res.status === 401) return { refused: await res.text() }
    throw new Error(`${url} answered ${res.status}: ${await res.text()}`)
  }
}

/** The Hono service of docs/tokens.md: hono/jwk with authgate's JWKS. */
async function honoService (t: Test, authgateUrl: string, issuer: string, audience: string): Promise<Verify> {
  const app = new Hono<{ Variables: JwtVariables<{ token_type: string, user_id: number }> }>()
  app.use('/orders', jwk({
    jwks_uri: `${authgateUrl}/.well-known/jwks.json`, // fetched again for every request: no cache
    alg: ['ES256'],
    // typ: hono/jwk refuses any typ but JWT unless told; authgate's access tokens are at+jwt.
    verification: { iss: issuer, aud: audience, typ: 'at+jwt' }
  }))
  app.get('/orders', (c) => {
    const claims = c.get('jwtPayload')
    if (claims.token_type !== 'access') return c.json({ error: 'a valid access token is required' }, 401)
    return c.json({ user_id: claims.user_id })
  })
  const server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 })
  await once(server, 'listening')
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return overHttp(`http://127.0.0.1:${(server.address() as AddressInfo).port}/orders`)
}

/** The express service of docs/tokens.md: express-jwt with jwks-rsa. */
async function expressService (t: Test, authgateUrl: string, issuer: string, audience: string): Promise<Verify> {
  const app = express()
  app.use('/orders', expressjwt({
    // Caches each key by kid (10 minutes); a kid it does not hold is fetched, at most 10 times a minute.
    secret: jwksRsa.expressJwtSecret({ jwksUri: `${authgateUrl}/.well-known/jwks.json`, cache: true, rateLimit: true }),
    algorithms: ['ES256'],
    issuer,
    audience
  }))
  app.get('/orders', (req: JWTRequest, res) => {
    if (req.auth?.token_type !== 'access') return res.status(401).json({ error: 'a valid access token is required' })
    res.json({ user_id: req.auth.user_id })
  })
  const onError: ErrorRequestHandler = (err, req, res, next) => {
    if (err.name !== 'UnauthorizedError') return next(err)
    res.status(401).json({ error: 'a valid access token is required' })
  }
  app.use(onError)
  const server = app.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return overHttp(`http://127.0.0.1:${(server.address() as AddressInfo).port}/orders`)
}

// The PyJWT verifier of docs/tokens.md, one client for every token (its JWKS cache lives across the
// rotation): a token a line on stdin, a JSON outcome a line on stdout.
const PYJWT_VERIFIER = `
import json, sys
import jwt

# Keeps the JWKS 300 s (lifespan) and fetches it again for a kid it does not hold.
jwks_client = jwt.PyJWKClient(sys.argv[1])
ISSUER, AUDIENCE = sys.argv[2], sys.argv[3]

def verify(token):
    key = jwks_client.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=['ES256'], audience=AUDIENCE, issuer=ISSUER)
    if claims.get('token_type') != 'access':
        raise jwt.InvalidTokenError('not an access token')
    return claims

for line in sys.stdin:
    try:
        print(json.dumps({'claims': verify(line.strip())}), flush=True)
    except jwt.PyJWTError as error:
        print(json.dumps({'refused': f'{type(error).__name__}: {error}'}), flush=True)
`
const PYTHON = '/usr/bin/python3'
const pyjwtMissing = spawnSync(PYTHON, ['-c', 'import jwt, cryptography']).status !== 0
  ? `${PYTHON} cannot import jwt and cryptography: apt-get install python3-jwt (.ci/run does)`
  : false

function pyjwtVerifier (t: Test, authgateUrl: string, issuer: string, audience: string): Verify {
  // urllib follows *_proxy variables: the JWKS is on 127.0.0.1 and must be fetched directly.
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/_proxy$/i.test(name)))
  const python = spawn(PYTHON, ['-c', PYJWT_VERIFIER, `${authgateUrl}/.well-known/jwks.json`, issuer, audience], { env, stdio: 'pipe' })
  let stderr = ''
  python.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  t.teardown(async () => {
    if (python.exitCode !== null || python.signalCode !== null) return
    const exited = once(python, 'exit')
    python.stdin.end()
    const timer = setTimeout(() => python.kill('SIGKILL'), 5_000)
    await exited
    clearTimeout(timer)
  })
  const lines = createInterface({ input: python.stdout })[Symbol.asyncIterator]()
  return async (token) => {
    python.stdin.write(`${token}\n`)
    const timer = setTimeout(() => python.kill('SIGKILL'), 20_000)
    const line = await lines.next().finally(() => clearTimeout(timer))
    if (line.done === true) throw new Error(`the PyJWT verifier stopped (${python.exitCode ?? python.signalCode}): ${stderr}`)
    return JSON.parse(line.value)
  }
}

t.test('other services verify access tokens with their own libraries against the live JWKS', async (t) => {
  const app = await build(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const authgateUrl = urlOf(app)
  const box = new SecretBox(SECRET_KEY, 'signing-keys')
  // What a service is configured with: the issuer of the discovery document, the audience of the tokens.
  const { issuer } = await (await fetch(`${authgateUrl}/.well-known/openid-configuration`)).json() as { issuer: string }
  const audience = claimsOf((await login(app)).access).aud as string

  /** A signed-in user's tokens, and tokens of another issuer and audience signed with the app's current key. */
  async function tokensNow () {
    const { access, refresh, user } = await login(app)
    const key = (await loadSigningKeys(app.db, box, 0)).find((k) => !k.next && k.retiredAt === null)!
    const sign = createSigner({ key: key.privateKey, algorithm: 'ES256', kid: key.kid, header: { alg: 'ES256', typ: 'at+jwt' }, expiresIn: 300_000 })
    const claims = { token_type: 'access', user_id: user.id, sub: String(user.id), iss: issuer, aud: audience }
    return {
      access,
      refresh,
      user,
      kid: key.kid,
      otherIssuer: sign({ ...claims, iss: 'someone-else' }),
      otherAudience: sign({ ...claims, aud: 'someone-else' })
    }
  }

  async function checkVerifier (t: Test, verify: Verify, accepted: (userId: number) => Record<string, unknown>): Promise<void> {
    const before = await tokensNow()
    t.match(await verify(before.access), { claims: accepted(before.user.id) }, 'a fresh access token verifies')
    t.match(await verify(before.refresh), { refused: String }, 'the refresh token is refused: its key is not in the JWKS')
    t.match(await verify(before.otherIssuer), { refused: String }, 'a token of another issuer is refused')
    t.match(await verify(before.otherAudience), { refused: String }, 'a token of another audience is refused')

    await rotateSigningKey(app.db, box, 'ES256')
    await app.keyring.reload()
    const after = await tokensNow()
    t.not(after.kid, before.kid, 'the app signs with the new key')
    t.match(await verify(after.access), { claims: accepted(after.user.id) }, 'a token of the new key verifies: the JWKS is fetched again for its kid')
    t.match(await verify(before.access), { claims: accepted(before.user.id) }, 'the token signed before the rotation still verifies')
    t.match(await verify(after.otherIssuer), { refused: String }, 'another issuer is still refused with the new key')
  }

  t.test('a Fastify service with @fastify/jwt and get-jwks', async (t) => {
    const verify = await ordersService(t, authgateUrl, issuer, audience)
    await checkVerifier(t, verify, (userId) => ({ user_id: userId }))
  })

  t.test('jose', async (t) => {
    await checkVerifier(t, joseVerifier(authgateUrl, issuer, audience), (userId) => ({ user_id: userId, token_type: 'access' }))
  })

  t.test('Hono with hono/jwk', async (t) => {
    const verify = await honoService(t, authgateUrl, issuer, audience)
    await checkVerifier(t, verify, (userId) => ({ user_id: userId }))
  })

  t.test('express with express-jwt and jwks-rsa', async (t) => {
    const verify = await expressService(t, authgateUrl, issuer, audience)
    await checkVerifier(t, verify, (userId) => ({ user_id: userId }))
  })

  t.test('PyJWT', { skip: pyjwtMissing }, async (t) => {
    await checkVerifier(t, pyjwtVerifier(t, authgateUrl, issuer, audience), (userId) => ({ user_id: userId, token_type: 'access' }))
  })

  // docs/service-to-service.md: a service configured with its own audience takes the tokens
  // minted for it, and refuses those for another service and users' tokens.
  t.test('service tokens: jose and PyJWT take one for their own audience and refuse another\'s', async (t) => {
    const ORDERS = 'https://orders.example.test'
    const tokenOf = async (audience: string): Promise<string> => {
      const { client, secret } = await app.clients.create({ name: 'svc', scopes: ['orders:read'], audiences: [audience] })
      const res = await app.inject({
        method: 'POST',
        url: '/oauth/token',
        payload: 'grant_type=client_credentials',
        headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`${client.id}:${secret}`).toString('base64')}` }
      })
      return res.json().access_token
    }
    const mine = await tokenOf(ORDERS)
    const theirs = await tokenOf('https://billing.example.test')
    const verifiers: Array<[string, Verify | undefined]> = [
      ['jose', joseVerifier(authgateUrl, issuer, ORDERS)],
      ['PyJWT', pyjwtMissing === false ? pyjwtVerifier(t, authgateUrl, issuer, ORDERS) : undefined]
    ]
    for (const [name, verify] of verifiers) {
      if (verify === undefined) continue
      t.match(await verify(mine), { claims: { aud: ORDERS, scope: 'orders:read', gty: 'client_credentials' } }, `${name}: its own audience`)
      t.match(await verify(theirs), { refused: String }, `${name}: another service's token`)
      t.match(await verify((await login(app)).access), { refused: String }, `${name}: a user's token`)
    }
  })
})
