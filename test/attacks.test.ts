import { createHmac, createPublicKey, generateKeyPairSync, sign as cryptoSign } from 'node:crypto'
import { createSigner } from 'fast-jwt'
import t, { type Test } from 'tap'
import { SecretBox } from '../src/lib/secret-box.ts'
import { loadSigningKeys } from '../src/services/keys/signing-keys.ts'
import { build, claimsOf, login, postJson, SECRET_KEY, TestClock } from './helper.ts'

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

/** A token with any header and claims, signed by `signature` over the signing input. */
function forge (header: Record<string, unknown>, claims: Record<string, unknown>, signature: (input: string) => string): string {
  const input = `${b64(header)}.${b64(claims)}`
  return `${input}.${signature(input)}`
}

t.test('forged and tampered tokens are refused', async (t) => {
  const clock = new TestClock()
  const app = await build(t, { clock })
  const { access, refresh } = await login(app)
  const claims = claimsOf(access)
  const kid = app.keyring.jwks.keys[0]!.kid
  const publicPem = createPublicKey({ key: app.keyring.jwks.keys[0]! as never, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()

  async function expectRefused (t: Test, token: string, why: string): Promise<void> {
    const detail = await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${token}` } })
    t.equal(detail.statusCode, 401, `detail: ${why}`)
    t.equal(detail.json().code, 'token_not_valid', why)
    t.equal((await postJson(app, '/api/token/verify', { token })).statusCode, 401, `verify: ${why}`)
  }

  t.test('the genuine token works, so the refusals below are about the forgery', async (t) => {
    t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode, 200)
  })

  t.test('alg none', async (t) => {
    await expectRefused(t, forge({ alg: 'none', typ: 'JWT', kid }, claims, () => ''), 'alg none')
    await expectRefused(t, forge({ alg: 'none', typ: 'JWT' }, claims, () => ''), 'alg none without kid')
  })

  t.test('HS256 signed with the public key as the secret', async (t) => {
    const token = forge({ alg: 'HS256', typ: 'JWT', kid }, claims, (input) => createHmac('sha256', publicPem).update(input).digest('base64url'))
    await expectRefused(t, token, 'HS256 with the public key')
  })

  t.test('a key of the attacker under the real kid', async (t) => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const token = forge({ alg: 'ES256', typ: 'JWT', kid }, claims,
      (input) => cryptoSign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url'))
    await expectRefused(t, token, 'foreign key, real kid')
  })

  t.test('an unknown kid, and no kid', async (t) => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
    await expectRefused(t, createSigner({ key: pem, algorithm: 'ES256', kid: 'not-a-kid' })(claims), 'unknown kid')
    await expectRefused(t, createSigner({ key: pem, algorithm: 'ES256' })(claims), 'no kid')
  })

  t.test('jku, x5u, jwk and x5c headers are refused even on a token our key signed', async (t) => {
    const [key] = await loadSigningKeys(app.db, new SecretBox(SECRET_KEY, 'signing-keys'), 0)
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const signWith = (header: Record<string, unknown>): string =>
      createSigner({ key: key!.privateKey, algorithm: 'ES256', kid, header: { alg: 'ES256', typ: 'at+jwt', ...header } })(claims)
    t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${signWith({})}` } })).statusCode, 200, 'control: our key, no extra header')
    await expectRefused(t, signWith({ jku: 'http://127.0.0.1:9/jwks.json' }), 'jku')
    await expectRefused(t, signWith({ x5u: 'http://127.0.0.1:9/cert.pem' }), 'x5u')
    await expectRefused(t, signWith({ jwk: publicKey.export({ format: 'jwk' }) }), 'jwk')
    await expectRefused(t, signWith({ x5c: ['MIIB'] }), 'x5c')
  })

  t.test('a payload changed after signing', async (t) => {
    const [header, , signature] = access.split('.')
    await expectRefused(t, `${header}.${b64({ ...claims, user_id: 999, sub: '999' })}.${signature}`, 'tampered payload')
  })

  t.test('a wrong issuer or audience, even signed with our own key', async (t) => {
    const [key] = await loadSigningKeys(app.db, new SecretBox(SECRET_KEY, 'signing-keys'), 0)
    const signWith = (changes: Record<string, unknown>): string =>
      createSigner({ key: key!.privateKey, algorithm: 'ES256', kid, header: { alg: 'ES256', typ: 'at+jwt' } })({ ...claims, ...changes })
    t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${signWith({})}` } })).statusCode, 200, 'control: our key, our claims')
    await expectRefused(t, signWith({ iss: 'someone-else' }), 'wrong issuer')
    await expectRefused(t, signWith({ aud: 'another-api' }), 'wrong audience')
    await expectRefused(t, signWith({ iss: undefined }), 'no issuer')
    await expectRefused(t, signWith({ token_type: 'admin' }), 'unknown token type')
  })

  t.test('claims of the wrong shape are refused before any reaches SQL, even signed with our own key', async (t) => {
    const [key] = await loadSigningKeys(app.db, new SecretBox(SECRET_KEY, 'signing-keys'), 0)
    const signWith = (changes: Record<string, unknown>): string =>
      createSigner({ key: key!.privateKey, algorithm: 'ES256', kid, header: { alg: 'ES256', typ: 'at+jwt' } })({ ...claims, ...changes })
    await expectRefused(t, signWith({ sid: 'not-a-uuid' }), 'sid not a UUID')
    await expectRefused(t, signWith({ jti: "x' or 1=1 --" }), 'jti not a UUID')
    await expectRefused(t, signWith({ user_id: 2 ** 40, sub: String(2 ** 40) }), 'user_id past the column')
    await expectRefused(t, signWith({ user_id: '1' }), 'user_id a string')
    await expectRefused(t, signWith({ sub: '999999' }), 'sub not the user_id')
  })

  t.test('an access token without typ at+jwt, even signed with our own key', async (t) => {
    const [key] = await loadSigningKeys(app.db, new SecretBox(SECRET_KEY, 'signing-keys'), 0)
    await expectRefused(t, createSigner({ key: key!.privateKey, algorithm: 'ES256', kid })(claims), 'typ JWT')
  })

  t.test('a token of another deployment, same issuer and audience, other keys', async (t) => {
    const other = await build(t, { clock })
    const foreign = await login(other)
    await expectRefused(t, foreign.access, 'another deployment')
  })

  t.test('a refresh token used as access, and an access token used to refresh', async (t) => {
    const detail = await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${refresh}` } })
    t.equal(detail.statusCode, 401)
    t.equal(detail.json().code, 'token_not_valid')
    const res = await postJson(app, '/api/token/refresh', { refresh: access })
    t.equal(res.statusCode, 401)
  })

  t.test('an expired access token: 401 token_expired', async (t) => {
    clock.advance(-301)
    const old = await login(app)
    clock.advance(301)
    const res = await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${old.access}` } })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'token_expired')
    t.match(res.headers['www-authenticate'], /error="invalid_token"/)
  })
})
