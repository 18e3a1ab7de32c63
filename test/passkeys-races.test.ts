import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { generateSync } from 'otplib'
import { bearer, build, claimsOf, freshDatabase, login, postJson, tally, TestClock } from './helper.ts'
import { assert, register as create, type Options, type SoftCredential } from './soft-authenticator.ts'

// Passkeys used at once (issue 29): a challenge is spent once, a signature counter is taken once
// (a guarded update), an mfa_token is spent once, a user gets one user handle. Each race is run
// several rounds. Both engines; on PostgreSQL the two requests of a race go to two replicas (two
// apps, two pools) of one database, so that they truly run at once.

const postgres = process.env.DB_ENGINE === 'postgres'
const HERE: Options = { origin: 'https://app.example.com', rpId: 'example.com' }
const ROUNDS = 5

t.test('passkeys used at once', async (t) => {
  const clock = new TestClock()
  const database = await freshDatabase(t)
  const env = { WEBAUTHN_RP_ID: 'example.com', WEBAUTHN_ORIGINS: 'https://app.example.com' }
  const first = await build(t, { clock, database, env })
  const apps: FastifyInstance[] = [first, postgres ? await build(t, { clock, database, env }) : first]
  /** The two requests of a race, one on each replica. */
  const both = <T>(request: (app: FastifyInstance, i: number) => Promise<T>): Promise<T[]> => Promise.all(apps.map(request))

  const options = async (app: FastifyInstance, body: Record<string, unknown> = {}): Promise<{ challengeId: string, options: { challenge: string } }> => {
    const res = await postJson(app, '/api/auth/passkeys/authentication/options', body)
    if (res.statusCode !== 200) throw new Error(`authentication options: ${res.statusCode} ${res.body}`)
    return { challengeId: res.json().challenge_id, options: res.json().options }
  }
  const verify = (app: FastifyInstance, body: Record<string, unknown>) => postJson(app, '/api/auth/passkeys/authentication/verify', body)

  /** A passkey added from the session of `access`. */
  async function addPasskey (access: string): Promise<SoftCredential> {
    const { challenge_id: challengeId, options } = (await postJson(first, '/api/auth/passkeys/registration/options', {}, bearer(access))).json()
    const { credential, response } = create(options, HERE)
    const res = await postJson(first, '/api/auth/passkeys/registration/verify', { challenge_id: challengeId, credential: response }, bearer(access))
    if (res.statusCode !== 201) throw new Error(`registration: ${res.statusCode} ${res.body}`)
    return credential
  }
  async function passkeyAccess (credential: SoftCredential): Promise<string> {
    const { challengeId, options: opts } = await options(first)
    const res = await verify(first, { challenge_id: challengeId, credential: assert(credential, opts, HERE) })
    if (res.statusCode !== 200) throw new Error(`passkey sign-in: ${res.statusCode} ${res.body}`)
    return res.json().access
  }

  t.test('two verifies of one challenge: one sign-in, the other 400 passkey_challenge_invalid', async (t) => {
    const credential = await addPasskey((await login(first)).access)
    for (let round = 0; round < ROUNDS; round++) {
      const { challengeId, options: opts } = await options(first)
      const body = { challenge_id: challengeId, credential: assert(credential, opts, HERE) }
      t.same(tally(await both((app) => verify(app, body))), { 200: 1, '400 passkey_challenge_invalid': 1 }, `round ${round}`)
    }
  })

  t.test('two sign-ins by one passkey showing the same counter, each on its own challenge: one sign-in (the guarded counter update)', async (t) => {
    const credential = await addPasskey((await login(first)).access)
    for (let round = 0; round < ROUNDS; round++) {
      const ceremonies = await Promise.all([options(first), options(first)])
      // An authenticator and its copy: the same counter, signed for each challenge.
      const counter = credential.counter
      const bodies = ceremonies.map(({ challengeId, options: opts }) => {
        credential.counter = counter
        return { challenge_id: challengeId, credential: assert(credential, opts, HERE) }
      })
      t.same(tally(await both((app, i) => verify(app, bodies[i]!))), { 200: 1, '401 passkey_invalid': 1 }, `round ${round}`)
    }
  })

  t.test('two second steps on one mfa_token, by two passkeys of its user: one pair, the other 401 mfa_token_invalid', async (t) => {
    const { access, user } = await login(first)
    // TOTP first (as test/mfa.test.ts enrols it): the password sign-in then asks for a second step.
    const added = (await postJson(first, '/api/auth/mfa/totp', {}, bearer(access))).json()
    const verified = await postJson(first, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: generateSync({ secret: added.secret, epoch: Math.floor(clock.now().getTime() / 1000) }) }, bearer(access))
    t.equal(verified.statusCode, 200, 'TOTP enrolled')
    const credentials = [await addPasskey(verified.json().access)]
    credentials.push(await addPasskey(await passkeyAccess(credentials[0]!)))
    for (let round = 0; round < ROUNDS; round++) {
      const step = (await postJson(first, '/api/auth/login', { identifier: user.username, password: user.password })).json()
      t.match(step, { mfa_required: true, methods: ['totp', 'passkey', 'recovery_code'] })
      const bodies = await Promise.all(credentials.map(async (credential) => {
        const { challengeId, options: opts } = await options(first, { mfa_token: step.mfa_token })
        return { challenge_id: challengeId, credential: assert(credential, opts, HERE), mfa_token: step.mfa_token }
      }))
      const answers = await both((app, i) => verify(app, bodies[i]!))
      t.same(tally(answers), { 200: 1, '401 mfa_token_invalid': 1 }, `round ${round}`)
      t.match(claimsOf(answers.find((res) => res.statusCode === 200)!.json().access), { user_id: user.id, aal: 'aal2', amr: ['pwd', 'hwk', 'user', 'mfa'] })
    }
  })

  t.test('two first registration options of a user at once: one user handle', async (t) => {
    for (let round = 0; round < ROUNDS; round++) {
      const { access, user } = await login(first)
      const answers = await both((app) => postJson(app, '/api/auth/passkeys/registration/options', {}, bearer(access)))
      t.same(answers.map((res) => res.statusCode), [200, 200])
      const handles = answers.map((res) => res.json().options.user.id as string)
      t.equal(handles[0], handles[1], `round ${round}`)
      const stored = await first.db.selectFrom('users').select('webauthn_user_handle').where('id', '=', user.id).executeTakeFirstOrThrow()
      t.equal(stored.webauthn_user_handle, handles[0], 'the one kept')
    }
  })
})
