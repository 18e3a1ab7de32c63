import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { createLocalJWKSet, exportJWK, exportSPKI, generateKeyPair, importJWK, jwtVerify, SignJWT, type CryptoKey } from 'jose'
import { randomBytes, randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import t, { type Test } from 'tap'
import type { TrustedIssuer } from '../src/services/oauth/clients.ts'
import { basic, bearer, build, claimsOf, login, operator, postForm, TestClock } from './helper.ts'
import { startWorkloadIssuer, type WorkloadIssuer } from './workload-issuer.ts'

// Workload identities (issue 30, RFC 7523 §2.1): a workload client has no secret; it gets its own
// token with the JWT bearer grant and a token of the issuer it trusts, here a real signing issuer
// on 127.0.0.1 (test/workload-issuer.ts) minting tokens of Kubernetes' and GitHub Actions'
// shapes. Both engines.

const ORDERS = 'https://orders.example.test'
const BILLING = 'https://billing.example.test'
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token'
const SA = 'system:serviceaccount:shop:orders-worker'
const REPO = 'repo:octo-org/octo-repo:ref:refs/heads/main'
// The one answer for every token that is not of the trusted issuer and subject, rightly signed,
// or that names no workload client: written out here, so that a change of it shows.
const UNTRUSTED = 'The assertion is not taken: it is not a token of the issuer and subject the client trusts, signed with the algorithm it pins by a key of that issuer'
const USED = 'The assertion is not taken: it was used already: each token of the issuer is taken once (RFC 7523 §3); get a new one'
const WORKLOAD_AT_SECRET_GRANT = 'Client authentication failed: the client is a workload client: it has no secret and no key; it gets tokens with grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer and a token of the issuer it trusts (RFC 7523 §2.1).'

const tokenRequest = (app: FastifyInstance, fields: Record<string, string>, headers: Record<string, string> = {}) => postForm(app, '/oauth/token', fields, headers)
/** The JWT bearer grant: client_id and a token of its issuer. */
const jwtBearer = (app: FastifyInstance, clientId: string, assertion: string, fields: Record<string, string> = {}, headers: Record<string, string> = {}) =>
  tokenRequest(app, { grant_type: JWT_BEARER, client_id: clientId, assertion, ...fields }, headers)

interface WorkloadOptions { subjects?: string[], jwksUri?: string | null, alg?: TrustedIssuer['alg'], scopes?: string[], audiences?: string[], exchangeAudiences?: string[] }
/** A workload client trusting `issuer` (its discovery document unless jwksUri is given) for `subjects`. */
async function workload (app: FastifyInstance, issuer: WorkloadIssuer, { subjects = [SA], jwksUri = null, alg = 'RS256', scopes = ['orders:read'], audiences = [ORDERS], exchangeAudiences = [] }: WorkloadOptions = {}) {
  const { client, secret } = await app.clients.create({ name: 'orders-worker', scopes, audiences, exchangeAudiences, trust: { issuer: issuer.url, jwksUri, subjects, alg } })
  return { client, secret }
}

/** An OAuth error answer (RFC 6749 §5.2): its status, error and error_description, to compare whole. */
const refusal = (res: LightMyRequestResponse) => ({ status: res.statusCode, ...res.json() as { error: string, error_description: string } })

/** authgate's token, verified with jose against authgate's published JWKS. */
async function verified (app: FastifyInstance, clock: TestClock, token: string, audience: string) {
  const jwks = (await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json()
  const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(jwks), { issuer: app.config.JWT_ISSUER, audience, currentDate: clock.now(), typ: 'at+jwt' })
  return { payload, protectedHeader }
}

/** Moves Date.now (which jose's remote key set measures its cache and cooldown with) ahead, until the test ends. */
function movingDateNow (t: Test): { ahead: (ms: number) => void } {
  const realNow = Date.now
  let offsetMs = 0
  Date.now = () => realNow() + offsetMs
  t.teardown(() => { Date.now = realNow })
  return { ahead: (ms) => { offsetMs += ms } }
}

t.test('workload identities: the JWT bearer grant with tokens of a trusted issuer', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const authgate = app.config.JWT_ISSUER
  const now = clock.now

  t.test('a Kubernetes projected service-account token of a listed subject gets the workload client its own token, the issuer found by discovery', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client, secret } = await workload(app, cluster)
    t.equal(secret, null, 'a workload client is given no secret')
    t.equal(client.authMethod, 'none')
    const res = await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }))
    t.equal(res.statusCode, 200, res.body)
    const body = res.json()
    t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'scope', 'token_type'], 'no refresh token')
    t.match(body, { token_type: 'Bearer', expires_in: 600, scope: 'orders:read' })
    const { payload, protectedHeader } = await verified(app, clock, body.access_token, ORDERS)
    t.equal(protectedHeader.typ, 'at+jwt')
    t.match(payload, { iss: authgate, aud: ORDERS, sub: client.id, client_id: client.id, scope: 'orders:read', gty: 'client_credentials' })
    t.equal((payload.exp as number) - (payload.iat as number), 600, 'the client\'s own token lifetime')
    t.same(cluster.fetches, { discovery: 1, jwks: 1 }, 'the discovery document, then the JWKS it names')

    const short = await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate, expirationSeconds: 600 }))
    t.equal(short.statusCode, 200, `expirationSeconds 600, Kubernetes' least: ${short.body}`)
    const endpoint = await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: [`${authgate}/oauth/token`, 'https://kubernetes.default.svc'] }))
    t.equal(endpoint.statusCode, 200, `an aud list naming the token endpoint: ${endpoint.body}`)
    t.same(cluster.fetches, { discovery: 1, jwks: 1 }, 'both kept: read once')
  })

  t.test('with trust.jwksUri (--trust-jwks-uri) the keys are read from that URL, without discovery', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now, discovery: false })
    const { client } = await workload(app, cluster, { jwksUri: cluster.jwksUri })
    const res = await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }))
    t.equal(res.statusCode, 200, res.body)
    t.match((await verified(app, clock, res.json().access_token, ORDERS)).payload, { sub: client.id, client_id: client.id, gty: 'client_credentials' })
    t.same(cluster.fetches, { discovery: 0, jwks: 1 })
  })

  t.test('a GitHub Actions OIDC token of the repository\'s main branch gets the workload client its token', async (t) => {
    const github = await startWorkloadIssuer(t, { now, jwksPath: '/.well-known/jwks' })
    const { client } = await workload(app, github, { subjects: ['repo:octo-org/octo-repo:environment:prod', REPO], scopes: ['orders:read', 'orders:write'] })
    const assertion = await github.githubToken({ audience: authgate })
    t.match(claimsOf(assertion), { sub: REPO, aud: authgate, repository: 'octo-org/octo-repo', repository_owner: 'octo-org', ref: 'refs/heads/main' }, 'the shape GitHub documents')
    const res = await jwtBearer(app, client.id, assertion, { scope: 'orders:write' })
    t.equal(res.statusCode, 200, res.body)
    t.match((await verified(app, clock, res.json().access_token, ORDERS)).payload, { sub: client.id, client_id: client.id, scope: 'orders:write', gty: 'client_credentials' })
    const otherBranch = await jwtBearer(app, client.id, await github.githubToken({ audience: authgate, ref: 'refs/heads/feature' }))
    t.same(refusal(otherBranch), { status: 400, error: 'invalid_grant', error_description: UNTRUSTED }, 'another branch is another subject')
  })

  t.test('each token is taken once: again, or without a jti (by its hash), or ten presentations at once', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client } = await workload(app, cluster)
    const assertion = await cluster.kubernetesToken({ audience: authgate })
    t.equal((await jwtBearer(app, client.id, assertion)).statusCode, 200)
    t.same(refusal(await jwtBearer(app, client.id, assertion)), { status: 400, error: 'invalid_grant', error_description: USED })

    const noJti = await cluster.kubernetesToken({ audience: authgate, claims: { jti: undefined } })
    t.notOk('jti' in claimsOf(noJti))
    t.equal((await jwtBearer(app, client.id, noJti)).statusCode, 200)
    t.same(refusal(await jwtBearer(app, client.id, noJti)), { status: 400, error: 'invalid_grant', error_description: USED }, 'spent by its hash')
    // The last base64url character of a 256-byte signature carries 4 bits no decoder reads:
    // the same signature written 15 more ways. Each is the same token, spent.
    const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    const last = ALPHABET.indexOf(noJti.at(-1)!)
    const rewritten = Array.from({ length: 16 }, (_, spare) => noJti.slice(0, -1) + ALPHABET[(last & 0b110000) | spare]).filter((text) => text !== noJti)
    t.equal(rewritten.length, 15)
    for (const text of rewritten) t.same(refusal(await jwtBearer(app, client.id, text)), { status: 400, error: 'invalid_grant', error_description: USED }, 'its signature written another way')
    const anotherNoJti = await cluster.kubernetesToken({ audience: authgate, iat: Math.floor(now().getTime() / 1000) - 1, claims: { jti: undefined } })
    t.equal((await jwtBearer(app, client.id, anotherNoJti)).statusCode, 200, 'another token without a jti is another hash')
    const rows = await app.db.selectFrom('oauth_client_assertions').select('jti').where('client_id', '=', client.id).execute()
    t.equal(rows.filter((row) => row.jti.startsWith('sha256:')).length, 2)

    const once = await cluster.kubernetesToken({ audience: authgate })
    const answers = await Promise.all(Array.from({ length: 10 }, () => jwtBearer(app, client.id, once)))
    const counts: Record<string, number> = {}
    for (const res of answers) {
      const key = res.statusCode === 200 ? '200' : `${res.statusCode} ${res.json().error_description as string}`
      counts[key] = (counts[key] ?? 0) + 1
    }
    t.same(counts, { 200: 1, [`400 ${USED}`]: 9 })
  })

  t.test('refused, invalid_grant each, saying why; the client\'s configuration never shows', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client } = await workload(app, cluster)
    const iat = Math.floor(now().getTime() / 1000)
    const refused = async (assertion: string, clientId = client.id) => refusal(await jwtBearer(app, clientId, assertion))
    const notTaken = (why: string) => ({ status: 400, error: 'invalid_grant', error_description: `The assertion is not taken: ${why}` })
    const untrusted = { status: 400, error: 'invalid_grant', error_description: UNTRUSTED }

    t.same(await refused(await cluster.kubernetesToken({ audience: authgate, serviceAccount: 'billing-worker' })), untrusted, 'a subject the client does not list')
    const elsewhere = await startWorkloadIssuer(t, { now })
    t.same(await refused(await elsewhere.kubernetesToken({ audience: authgate })), untrusted, 'the same subject of another issuer')
    t.same(await refused(await cluster.kubernetesToken({ audience: authgate, claims: { iss: `${cluster.url}/` } })), untrusted, 'iss must be the trusted issuer exactly')

    // The algorithm pinned: RS256. The issuer's own ES256 key signs a token it publishes the key of.
    const es256 = await cluster.sign(claimsOf(await cluster.kubernetesToken({ audience: authgate })), { alg: 'ES256' })
    t.same(await refused(es256), untrusted, 'ES256, by a key of the issuer, when RS256 is pinned')
    const { client: pinnedEs } = await workload(app, cluster, { alg: 'ES256' })
    const esTaken = await jwtBearer(app, pinnedEs.id, es256)
    t.equal(esTaken.statusCode, 200, `the same token for a client pinning ES256: ${esTaken.body}`)
    const publicPem = new TextEncoder().encode(await exportSPKI(await importJWK(cluster.current.RS256.publicJwk, 'RS256') as CryptoKey))
    t.same(await refused(await cluster.sign(claimsOf(await cluster.kubernetesToken({ audience: authgate })), { alg: 'HS256', key: publicPem, kid: cluster.current.RS256.kid })), untrusted, 'HS256 keyed with the issuer\'s public key (algorithm confusion)')
    t.same(await refused(await cluster.sign(claimsOf(await cluster.kubernetesToken({ audience: authgate })), { alg: 'HS256', key: randomBytes(32) })), untrusted, 'HS256 with a shared secret')
    t.same(await refused(await cluster.sign(claimsOf(await cluster.kubernetesToken({ audience: authgate })), { alg: 'none' })), untrusted, 'unsigned (alg none)')

    const stranger = await generateKeyPair('RS256')
    const claims = claimsOf(await cluster.kubernetesToken({ audience: authgate }))
    t.same(await refused(await cluster.sign(claims, { key: stranger.privateKey, kid: cluster.current.RS256.kid })), untrusted, 'a key not in the JWKS, under the kid of one that is')
    t.same(await refused(await cluster.sign(claims, { key: stranger.privateKey, kid: 'not-published' })), untrusted, 'a key not in the JWKS, under a kid of its own')
    t.same(await refused(await cluster.sign(claims, { key: stranger.privateKey })), untrusted, 'a key not in the JWKS, no kid')
    t.equal((await jwtBearer(app, client.id, await cluster.sign(claims))).statusCode, 200, 'the same claims signed by the issuer: taken (none of the refused was spent)')

    t.same(await refused(await cluster.kubernetesToken({ audience: 'https://kubernetes.default.svc.cluster.local' })),
      notTaken(`its aud must be authgate's token endpoint (${authgate}/oauth/token) or issuer (${authgate})`), 'the API server\'s own audience')
    const expired = await cluster.kubernetesToken({ audience: authgate, iat: iat - 700, expirationSeconds: 600 })
    t.same(await refused(expired), notTaken(`it expired at ${new Date((iat - 100) * 1000).toISOString()}`))
    const legacy = await cluster.kubernetesToken({ audience: authgate, extended: true })
    t.equal((claimsOf(legacy).exp as number) - iat, 365 * 86_400, 'a 3607 s token the API server extended to a year')
    t.same(await refused(legacy), notTaken(`it expires more than 3600 s ahead (exp ${new Date((iat + 365 * 86_400) * 1000).toISOString()}): ask the issuer for a token of at most an hour`))
    t.equal((await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate, expirationSeconds: 3607 }))).statusCode, 200, 'the same 3607 s not extended: taken')
    t.same(await refused(await cluster.kubernetesToken({ audience: authgate, iat: iat + 120, expirationSeconds: 600 })), notTaken('it is not valid yet (nbf)'), 'nbf two minutes ahead')
    t.same(await refused(await cluster.kubernetesToken({ audience: authgate, iat: iat + 120, claims: { nbf: undefined, exp: iat + 600 } })), notTaken('it was issued in the future (iat)'))
    const noDate = 'it has no exp (a NumericDate: seconds since 1970, up to the year 9999)'
    t.same(await refused(await cluster.kubernetesToken({ audience: authgate, claims: { exp: undefined } })), notTaken(noDate))
    // Past what a date can be printed as: refused as no date, never a 500 from printing it.
    t.same(await refused(await cluster.kubernetesToken({ audience: authgate, claims: { exp: 1e20 } })), notTaken(noDate), 'exp 1e20')
    t.same(await refused(await cluster.kubernetesToken({ audience: authgate, claims: { exp: -1e20 } })), notTaken(noDate), 'exp -1e20')
    t.same(await refused('not-a-jwt'), notTaken('it is not a JWT'))
    t.same(await refused('eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln'), notTaken('it is not a JWT'), 'three parts, no JSON claims')

    // Who names an id learns nothing from the answer: unknown, a secret client, a key client, an introspection-only id.
    const good = () => cluster.kubernetesToken({ audience: authgate })
    const secretClient = await app.clients.create({ name: 'orders', scopes: ['orders:read'], audiences: [ORDERS] })
    const keyClient = await app.clients.create({ name: 'signer', scopes: [], audiences: [ORDERS], jwks: { keys: [{ ...await exportJWK(stranger.publicKey), kid: 'k' }] } })
    for (const [what, id] of [['an unknown client id', randomBytes(16).toString('hex')], ['a client_secret_basic client', secretClient.client.id], ['a private_key_jwt client', keyClient.client.id], ['an id that is no client id', 'orders-worker']] as const) {
      t.same(await refused(await good(), id), untrusted, `${what}: the wrong subject's words`)
    }

    t.same(refusal(await tokenRequest(app, { grant_type: JWT_BEARER, client_id: client.id })),
      { status: 400, error: 'invalid_request', error_description: `assertion is required for grant_type=${JWT_BEARER}: a token of the issuer the client trusts.` })
    t.same(refusal(await tokenRequest(app, { grant_type: JWT_BEARER, assertion: await good() })),
      { status: 400, error: 'invalid_request', error_description: `client_id is required for grant_type=${JWT_BEARER}: the workload client the assertion is for.` })
  })

  t.test('a disabled workload client: 401 invalid_client, its token not spent; enabled again, the token is taken', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client } = await workload(app, cluster)
    const assertion = await cluster.kubernetesToken({ audience: authgate })
    await app.clients.disable(client.id)
    const res = await jwtBearer(app, client.id, assertion)
    t.same(refusal(res), { status: 401, error: 'invalid_client', error_description: 'Client authentication failed: the client is disabled.' })
    await app.clients.enable(client.id)
    t.equal((await jwtBearer(app, client.id, assertion)).statusCode, 200)
  })

  t.test('a workload client has no secret and no key: the JWT bearer grant takes client_id alone; client_credentials names the JWT bearer grant', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client } = await workload(app, cluster)
    const oneWay = { status: 400, error: 'invalid_request', error_description: 'A workload client has no secret and no key: name it with client_id alone; the assertion proves it.' }
    t.same(refusal(await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }), {}, { authorization: basic(client.id, 'anything') })), oneWay, 'HTTP Basic')
    t.same(refusal(await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }), { client_secret: 'anything' })), oneWay, 'client_secret in the body')
    const signer = await generateKeyPair('ES256')
    const iat = Math.floor(now().getTime() / 1000)
    const clientAssertion = await new SignJWT({ jti: randomUUID() }).setProtectedHeader({ alg: 'ES256' })
      .setIssuer(client.id).setSubject(client.id).setAudience(`${authgate}/oauth/token`).setIssuedAt(iat).setExpirationTime(iat + 60).sign(signer.privateKey)
    const withAssertion = { client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: clientAssertion }
    t.same(refusal(await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }), withAssertion)), oneWay, 'a client_assertion')

    const workloadRefusal = { status: 401, error: 'invalid_client', error_description: WORKLOAD_AT_SECRET_GRANT }
    const basicRes = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basic(client.id, 'anything') })
    t.same(refusal(basicRes), workloadRefusal, 'client_credentials with HTTP Basic')
    t.equal(basicRes.headers['www-authenticate'], 'Basic realm="authgate"')
    t.same(refusal(await tokenRequest(app, { grant_type: 'client_credentials', client_id: client.id, client_secret: 'anything' })), workloadRefusal, 'client_credentials with client_secret_post')
    t.same(refusal(await tokenRequest(app, { grant_type: 'client_credentials', ...withAssertion })), workloadRefusal, 'client_credentials with private_key_jwt')
    t.same(refusal(await tokenRequest(app, { grant_type: 'client_credentials', assertion: await cluster.kubernetesToken({ audience: authgate }) }, { authorization: basic(client.id, 'anything') })),
      { status: 400, error: 'invalid_request', error_description: 'assertion is not a parameter of grant_type=client_credentials.' }, 'the assertion is the JWT bearer grant\'s alone')
  })

  t.test('a scope the client does not hold is invalid_scope; a client of two audiences names one', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client } = await workload(app, cluster, { scopes: ['orders:read', 'orders:write'], audiences: [ORDERS, BILLING] })
    const token = () => cluster.kubernetesToken({ audience: authgate })
    t.same(refusal(await jwtBearer(app, client.id, await token(), { audience: ORDERS, scope: 'orders:read admin' })),
      { status: 400, error: 'invalid_scope', error_description: 'The client does not hold "admin".' })
    t.same(refusal(await jwtBearer(app, client.id, await token())),
      { status: 400, error: 'invalid_target', error_description: `This client has several audiences: name one (resource or audience): ${ORDERS}, ${BILLING}.` })
    t.same(refusal(await jwtBearer(app, client.id, await token(), { audience: 'https://payroll.example.test' })),
      { status: 400, error: 'invalid_target', error_description: 'The client may not have tokens for "https://payroll.example.test".' })
    const billing = await jwtBearer(app, client.id, await token(), { audience: BILLING, scope: 'orders:write' })
    t.equal(billing.statusCode, 200, billing.body)
    t.match(claimsOf(billing.json().access_token), { aud: BILLING, scope: 'orders:write', sub: client.id })
    const orders = await jwtBearer(app, client.id, await token(), { resource: ORDERS })
    t.equal(orders.statusCode, 200, orders.body)
    t.match(claimsOf(orders.json().access_token), { aud: ORDERS, scope: 'orders:read orders:write' })
  })

  t.test('a request refused for its scope or audience neither spends the token nor audits an issue: the same token, asked rightly, is taken', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client } = await workload(app, cluster)
    // A projected token is a file the pod reads again until the kubelet renews it: a workload retries with the same one.
    const assertion = await cluster.kubernetesToken({ audience: authgate })
    t.match(refusal(await jwtBearer(app, client.id, assertion, { scope: 'orders:write' })), { status: 400, error: 'invalid_scope' })
    t.match(refusal(await jwtBearer(app, client.id, assertion, { audience: BILLING })), { status: 400, error: 'invalid_target' })
    await app.audit.flush()
    const issued = () => app.db.selectFrom('audit_events').select('detail').where('event', '=', 'workload_token_issued').execute()
      .then((rows) => rows.filter((row) => row.detail?.client_id === client.id))
    t.same(await issued(), [], 'nothing issued, nothing audited as issued')
    const res = await jwtBearer(app, client.id, assertion, { scope: 'orders:read' })
    t.equal(res.statusCode, 200, res.body)
    await app.audit.flush()
    t.equal((await issued()).length, 1)
  })

  t.test('workload_token_issued is audited with the client, the issuer, the subject and the jti, and the admin API shows it', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client } = await workload(app, cluster)
    const assertion = await cluster.kubernetesToken({ audience: authgate })
    t.equal((await jwtBearer(app, client.id, assertion)).statusCode, 200)
    await jwtBearer(app, client.id, assertion)
    await app.audit.flush()
    const rows = await app.db.selectFrom('audit_events').select(['outcome', 'user_id', 'detail']).where('event', '=', 'workload_token_issued').execute()
    const mine = rows.filter((row) => row.detail?.client_id === client.id)
    t.same(mine, [{ outcome: 'success', user_id: null, detail: { client_id: client.id, issuer: cluster.url, subject: SA, jti: claimsOf(assertion).jti } }], 'once: the replay is not audited as issued')

    const ops = await operator(app, ['admin:audit:read'])
    const res = await app.inject({ method: 'GET', url: '/api/admin/audit?event=workload_token_issued&limit=100', headers: bearer(ops.token) })
    t.equal(res.statusCode, 200, res.body)
    t.match(res.json().events.filter((event: { detail: { client_id: string } }) => event.detail.client_id === client.id), [{ event: 'workload_token_issued', detail: { issuer: cluster.url, subject: SA } }])
  })

  t.test('without any secret, a workload client acts for a user: its own token for authgate, then a token exchange with it as actor_token', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const { client } = await workload(app, cluster, { audiences: [authgate], exchangeAudiences: [BILLING], scopes: ['billing:read'] })
    const own = await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }))
    t.equal(own.statusCode, 200, own.body)
    t.match(claimsOf(own.json().access_token), { aud: authgate, sub: client.id, gty: 'client_credentials' })
    const { access } = await login(app)
    const exchanged = await tokenRequest(app, { grant_type: EXCHANGE, subject_token: access, subject_token_type: ACCESS_TOKEN, actor_token: own.json().access_token, actor_token_type: ACCESS_TOKEN })
    t.equal(exchanged.statusCode, 200, exchanged.body)
    t.match(exchanged.json(), { issued_token_type: ACCESS_TOKEN, token_type: 'Bearer', scope: 'billing:read' })
    const { payload } = await verified(app, clock, exchanged.json().access_token, BILLING)
    t.match(payload, { sub: claimsOf(access).sub, client_id: client.id, act: { sub: client.id }, aud: BILLING, gty: EXCHANGE, user_id: claimsOf(access).user_id })
    t.notOk('act' in (payload.act as object), 'one actor')
  })

  t.test('the table holds a client to one way in: a workload row without subjects, or a secret client with a trusted issuer, is refused by its constraint', async (t) => {
    const row = { name: 'raw', scopes: sql<string[]>`cast('{}' as text[])`, audiences: sql<string[]>`cast(${[ORDERS]} as text[])`, token_ttl_s: 600, created_at: new Date() }
    const insert = (values: Record<string, unknown>) => app.db.insertInto('oauth_clients').values({ ...row, id: randomBytes(16).toString('hex'), ...values } as never).execute()
    const trusted = { trusted_issuer: 'https://issuer.example.test', trusted_alg: 'RS256', trusted_subjects: sql<string[]>`cast(${[SA]} as text[])` }
    await insert({ token_endpoint_auth_method: 'none', ...trusted })
    t.pass('a workload client as clients.create writes it')
    await t.rejects(insert({ token_endpoint_auth_method: 'none', ...trusted, trusted_subjects: null }), /oauth_clients_auth_method_check/, 'no subjects')
    await t.rejects(insert({ token_endpoint_auth_method: 'none', ...trusted, trusted_alg: null }), /oauth_clients_auth_method_check/, 'no algorithm')
    await t.rejects(insert({ token_endpoint_auth_method: 'client_secret_basic', ...trusted }), /oauth_clients_auth_method_check/, 'a secret client trusting an issuer')
    await t.rejects(insert({ token_endpoint_auth_method: 'client_secret_basic', trusted_subjects: sql<string[]>`cast(${[SA]} as text[])` }), /oauth_clients_auth_method_check/, 'a secret client with subjects')
  })

  t.test('clients.create refuses a workload client that cannot be trusted; update replaces its subjects at once', async (t) => {
    const cluster = await startWorkloadIssuer(t, { now })
    const trust = { issuer: cluster.url, jwksUri: null, subjects: [SA], alg: 'RS256' as const }
    const refusedWith = async (field: string, changes: Partial<TrustedIssuer>, extra: object = {}) => {
      await t.rejects(app.clients.create({ name: 'w', scopes: [], audiences: [ORDERS], trust: { ...trust, ...changes }, ...extra }), { code: 'VALIDATION_FAILED', errors: [{ field }] }, `${field}: ${JSON.stringify(changes)}`)
    }
    await refusedWith('trust_issuer', { issuer: 'http://issuer.example.test' })
    await refusedWith('trust_issuer', { issuer: 'http://10.0.0.1:8080' })
    await refusedWith('trust_issuer', { issuer: 'https://issuer.example.test/?tenant=a' })
    await refusedWith('trust_jwks_uri', { jwksUri: 'http://issuer.example.test/keys' })
    await refusedWith('subject', { subjects: [] })
    await refusedWith('subject', { subjects: [''] })
    await refusedWith('trust_alg', { alg: 'HS256' as TrustedIssuer['alg'] })
    await refusedWith('trust_alg', { alg: 'none' as TrustedIssuer['alg'] })
    const { publicKey } = await generateKeyPair('ES256')
    await refusedWith('trust_issuer', {}, { jwks: { keys: [await exportJWK(publicKey)] } })
    t.ok(await app.clients.create({ name: 'w', scopes: [], audiences: [ORDERS], trust: { ...trust, issuer: 'https://token.actions.githubusercontent.com' } }), 'https is taken')

    const { client } = await workload(app, cluster)
    t.equal((await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }))).statusCode, 200, 'the listed subject, before')
    const updated = await app.clients.update(client.id, { subjects: ['system:serviceaccount:shop:orders-worker-v2'] })
    t.same(updated.trust?.subjects, ['system:serviceaccount:shop:orders-worker-v2'])
    t.same(refusal(await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }))), { status: 400, error: 'invalid_grant', error_description: UNTRUSTED }, 'the old subject, refused at once')
    const v2 = await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate, serviceAccount: 'orders-worker-v2' }))
    t.equal(v2.statusCode, 200, v2.body)
    await t.rejects(app.clients.update(client.id, { subjects: [] }), { code: 'VALIDATION_FAILED', errors: [{ field: 'subject' }] })
    await t.rejects(app.clients.update((await app.clients.create({ name: 'x', scopes: [], audiences: [ORDERS] })).client.id, { subjects: [SA] }), { code: 'VALIDATION_FAILED', errors: [{ field: 'subject' }] }, 'a client that trusts no issuer has no subjects')
  })
})

t.test('the issuer\'s keys: a rotation is picked up; an issuer down is 503 upstream_unavailable, never a 500', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const authgate = app.config.JWT_ISSUER
  const now = clock.now
  const dateNow = movingDateNow(t)
  const unavailable = (why: string) => ({ status: 503, error: 'upstream_unavailable', error_description: `The identity provider could not be reached: ${why}.` })

  const cluster = await startWorkloadIssuer(t, { now })
  const { client } = await workload(app, cluster)
  const firstKey = cluster.current.RS256
  const firstKid = firstKey.kid
  t.equal((await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }))).statusCode, 200)
  t.same(cluster.fetches, { discovery: 1, jwks: 1 })

  const newKid = await cluster.rotate()
  t.not(newKid, firstKid)
  // jose reads a key set again for a kid it does not hold once 30 s have passed since the last read.
  dateNow.ahead(31_000)
  const rotated = await cluster.kubernetesToken({ audience: authgate })
  t.equal(JSON.parse(Buffer.from(rotated.split('.')[0]!, 'base64url').toString()).kid, newKid)
  const res = await jwtBearer(app, client.id, rotated)
  t.equal(res.statusCode, 200, `the new kid: ${res.body}`)
  t.same(cluster.fetches, { discovery: 1, jwks: 2 }, 'the JWKS read again, once')
  const oldKey = await cluster.sign(claimsOf(await cluster.kubernetesToken({ audience: authgate })), { key: firstKey.privateKey, kid: firstKid })
  t.equal((await jwtBearer(app, client.id, oldKey)).statusCode, 200, 'the previous key, still published')
  t.same(cluster.fetches, { discovery: 1, jwks: 2 }, 'a known kid: no read')

  await cluster.close()
  t.equal((await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }))).statusCode, 200, 'the issuer down, its keys kept: still taken')
  await cluster.rotate()
  dateNow.ahead(31_000)
  t.same(refusal(await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: authgate }))), unavailable(`the keys of ${cluster.url} could not be read`), 'a kid it must read the JWKS for')

  const gone = await startWorkloadIssuer(t, { now })
  await gone.close()
  const { client: orphan } = await workload(app, gone)
  const answer = await jwtBearer(app, orphan.id, await gone.kubernetesToken({ audience: authgate }))
  t.same(refusal(answer), unavailable(`the discovery document of ${gone.url} could not be read`), 'a dead port, by discovery')
  t.same(refusal(await jwtBearer(app, orphan.id, await gone.kubernetesToken({ audience: authgate }))), unavailable(`the discovery document of ${gone.url} could not be read`), 'and again (the failure kept a while)')
  const { client: direct } = await workload(app, gone, { jwksUri: gone.jwksUri })
  t.same(refusal(await jwtBearer(app, direct.id, await gone.kubernetesToken({ audience: authgate }))), unavailable(`the keys of ${gone.url} could not be read`), 'a dead port, by its JWKS URL')

  const failing = await startWorkloadIssuer(t, { now, discovery: false })
  failing.failing = true
  const { client: failed } = await workload(app, failing, { jwksUri: failing.jwksUri })
  t.same(refusal(await jwtBearer(app, failed.id, await failing.kubernetesToken({ audience: authgate }))), unavailable(`the keys of ${failing.url} could not be read`), 'a JWKS answering 503')
  t.equal(failing.fetches.jwks, 1)

  // The keys are read as the issuer is: a discovery document naming plain http off this machine is not followed.
  const downgrading = await startWorkloadIssuer(t, { now, namedJwksUri: 'http://jwks.example.test/keys' })
  const { client: misled } = await workload(app, downgrading)
  t.same(refusal(await jwtBearer(app, misled.id, await downgrading.kubernetesToken({ audience: authgate }))),
    unavailable(`the discovery document of ${downgrading.url} names no jwks_uri that is https (or http on 127.0.0.1 or localhost) without query or fragment`), 'an http jwks_uri off loopback')
  t.equal(downgrading.fetches.jwks, 0)
})

t.test('a workload refused by its client\'s rate limit keeps its token: nothing is spent before the request is admitted', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock, env: { RATE_LIMIT_ENABLED: 'true', RATE_LIMIT_CLIENT_MAX: '1' } })
  const cluster = await startWorkloadIssuer(t, { now: clock.now })
  const { client } = await workload(app, cluster)
  t.equal((await jwtBearer(app, client.id, await cluster.kubernetesToken({ audience: app.config.JWT_ISSUER }))).statusCode, 200, 'the first request of the minute')
  // A projected token is a file the pod presents again until the kubelet renews it.
  const assertion = await cluster.kubernetesToken({ audience: app.config.JWT_ISSUER })
  t.equal((await jwtBearer(app, client.id, assertion)).statusCode, 429, 'the client\'s allowance is spent')
  const spent = await app.db.selectFrom('oauth_client_assertions').select('jti').where('client_id', '=', client.id).execute()
  t.equal(spent.length, 1, 'only the first token is spent: the refused one can be presented again once the limit allows')
})
