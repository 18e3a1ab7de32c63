import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { generateSync } from 'otplib'
import { ALL_ADMIN_SCOPES, auditEvents, bearer, build, claimsOf, login, operator, postJson, register, TestClock, uniqueUser } from './helper.ts'
import { startInbox, tokenOf } from './smtp.ts'
import { assert, register as create, type Options, type SoftCredential } from './soft-authenticator.ts'

// Passkeys (issue 29) through the API, with the software authenticator of test/soft-authenticator.ts:
// registration, the sign-in without a password, the second step of another sign-in, every
// refusal of an answer, the recency rules, the user's and the operators' management, the
// pre-claimed account. Both engines. Parallel uses: test/passkeys-races.test.ts.

const RP_ID = 'example.com'
const ORIGIN = 'https://app.example.com'
/** Where the authenticator says it was used: the configured page, on the configured RP id. */
const HERE: Options = { origin: ORIGIN, rpId: RP_ID }

type User = Awaited<ReturnType<typeof register>>
interface Pair { access: string, refresh: string }

t.test('passkeys', async (t) => {
  const inbox = await startInbox(t)
  const clock = new TestClock()
  // Neither EMAIL_SIGN_IN nor APP_RESET_URL: an account's address is then no way in of its own,
  // so that a passkey can be its last (409 last_way_in). Access tokens of 15 minutes, so that the
  // clock can pass a challenge's 5 minutes and a sign-in's 10 with the tokens still valid.
  const app = await build(t, {
    clock,
    env: {
      WEBAUTHN_RP_ID: RP_ID,
      WEBAUTHN_ORIGINS: ORIGIN,
      SMTP_URL: inbox.url,
      EMAIL_VERIFICATION: 'optional',
      APP_VERIFY_URL: 'http://127.0.0.1:9/verify',
      JWT_ACCESS_TOKEN_LIFETIME: '15m'
    }
  })
  const nowS = (): number => Math.floor(clock.now().getTime() / 1000)

  const registrationOptions = (access: string) => postJson(app, '/api/auth/passkeys/registration/options', {}, bearer(access))
  const registrationVerify = (access: string, body: Record<string, unknown>) => postJson(app, '/api/auth/passkeys/registration/verify', body, bearer(access))
  const authenticationOptions = (body: Record<string, unknown> = {}) => postJson(app, '/api/auth/passkeys/authentication/options', body)
  const authenticationVerify = (body: Record<string, unknown>) => postJson(app, '/api/auth/passkeys/authentication/verify', body)
  const list = async (access: string) => (await app.inject({ url: '/api/auth/passkeys', headers: bearer(access) })).json().passkeys as Array<Record<string, unknown>>
  const remove = (access: string, id: string) => app.inject({ method: 'DELETE', url: `/api/auth/passkeys/${id}`, headers: bearer(access) })
  const storedPasskeys = async (userId: number) => (await app.db.selectFrom('passkeys').select('id').where('user_id', '=', userId).execute()).length
  const lastSignIn = async (userId: number) => (await app.db.selectFrom('users').select('last_login_at').where('id', '=', userId).executeTakeFirstOrThrow()).last_login_at?.getTime() ?? 0

  /** Adds a passkey made by the soft authenticator from the session of `access`: its id, its credential, the options it answered. */
  async function addPasskey (access: string, name?: string) {
    const started = await registrationOptions(access)
    if (started.statusCode !== 200) throw new Error(`registration options: ${started.statusCode} ${started.body}`)
    const { challenge_id: challengeId, options } = started.json()
    const { credential, response } = create(options, HERE)
    const res = await registrationVerify(access, { challenge_id: challengeId, credential: response, ...(name === undefined ? {} : { name }) })
    if (res.statusCode !== 201) throw new Error(`registration: ${res.statusCode} ${res.body}`)
    return { id: res.json().id as string, credential, options, response }
  }

  /** New authentication options (with an mfa_token, for its user's passkeys): the challenge's id and the options. */
  async function ceremony (body: Record<string, unknown> = {}): Promise<{ challengeId: string, options: { challenge: string, allowCredentials?: Array<{ id: string }> } }> {
    const res = await authenticationOptions(body)
    if (res.statusCode !== 200) throw new Error(`authentication options: ${res.statusCode} ${res.body}`)
    return { challengeId: res.json().challenge_id, options: res.json().options }
  }

  /** A sign-in by `credential` without a password: the answer; `settings` over the right ones. */
  async function passkeySignIn (credential: SoftCredential, settings: Partial<Options> & { userHandle?: string | null } = {}, extra: Record<string, unknown> = {}): Promise<LightMyRequestResponse> {
    const { challengeId, options } = await ceremony(extra.mfa_token === undefined ? {} : { mfa_token: extra.mfa_token })
    return await authenticationVerify({ challenge_id: challengeId, credential: assert(credential, options, { ...HERE, ...settings }), ...extra })
  }

  /** A user signed in by password (aal1) who then adds a passkey: the user, the passkey, the password session. */
  async function withPasskey (name?: string) {
    const { access, refresh, user } = await login(app)
    const passkey = await addPasskey(access, name)
    return { user, passkey, access, refresh }
  }

  /** A pair of a sign-in by the passkey: aal2, auth_time now. */
  async function passkeyPair (credential: SoftCredential): Promise<Pair> {
    const res = await passkeySignIn(credential)
    if (res.statusCode !== 200) throw new Error(`passkey sign-in: ${res.statusCode} ${res.body}`)
    return res.json()
  }

  const codeOf = (secret: string): string => generateSync({ secret, epoch: nowS() })
  /** Enrols and verifies TOTP from the session of `access` (as test/mfa.test.ts does): the secret and the aal2 pair enrolment gives. */
  async function enrolTotp (access: string): Promise<{ secret: string, pair: Pair }> {
    const added = (await postJson(app, '/api/auth/mfa/totp', {}, bearer(access))).json()
    const verified = await postJson(app, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: codeOf(added.secret) }, bearer(access))
    if (verified.statusCode !== 200) throw new Error(`enrolment: ${verified.statusCode} ${verified.body}`)
    // The next time step: the code just used is not taken twice.
    clock.advance(30)
    return { secret: added.secret, pair: verified.json() }
  }

  /** A user with a verified TOTP factor and then a passkey (added from the aal2 session enrolment gave). */
  async function withTotpAndPasskey () {
    const { access, user } = await login(app)
    const totp = await enrolTotp(access)
    const passkey = await addPasskey(totp.pair.access)
    return { user, passkey, secret: totp.secret }
  }

  const passwordStep = (user: User) => postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })

  t.test('two passkeys of one user: both sign in, and the options name the user by one stable handle that is neither its id nor its address', async (t) => {
    const { user, passkey: first, access } = await withPasskey('laptop')
    const handle = first.options.user.id as string
    t.match(first.options, {
      rp: { id: RP_ID, name: 'authgate' },
      user: { name: user.username },
      attestation: 'none',
      authenticatorSelection: { residentKey: 'required', userVerification: 'required' },
      excludeCredentials: []
    })
    t.match(handle, /^[A-Za-z0-9_-]{43}$/, '32 random bytes')
    for (const known of [String(user.id), user.email, user.username]) {
      t.not(handle, known)
      t.not(handle, Buffer.from(known).toString('base64url'))
    }
    // The second is added from a passkey session: the user can now sign in at aal2, so an aal1 one would not do.
    const second = await addPasskey((await passkeyPair(first.credential)).access, 'phone')
    t.equal(second.options.user.id, handle, 'the same handle for the second (kratos#4519: not a new one per passkey)')
    t.same(second.options.excludeCredentials.map((c: { id: string }) => c.id), [first.credential.id], 'the first one excluded')
    t.not(second.credential.id, first.credential.id)

    for (const credential of [first.credential, second.credential]) {
      const res = await passkeySignIn(credential)
      t.equal(res.statusCode, 200)
      t.equal(claimsOf(res.json().access).user_id, user.id, 'the user the handle names')
    }
    const third = (await registrationOptions((await passkeyPair(second.credential)).access)).json().options
    t.equal(third.user.id, handle, 'and it never changes')
    t.same((await list(access)).map((p) => p.name), ['laptop', 'phone'])
  })

  t.test('a sign-in by a passkey alone: the pair and cookies as /api/auth/login gives them, aal2, which /api/auth/check?aal=aal2 accepts', async (t) => {
    const { user, passkey, access: passwordAccess } = await withPasskey()
    const res = await passkeySignIn(passkey.credential)
    t.equal(res.statusCode, 200)
    t.same(Object.keys(res.json()).sort(), ['access', 'refresh'])
    const login = await passwordStep(user)
    const cookieNames = (r: LightMyRequestResponse) => r.cookies.map((c) => c.name).sort()
    t.same(cookieNames(res), cookieNames(login), 'the cookies login sets')
    t.match(String(res.headers['set-cookie']), /__Host-access_token=.*HttpOnly/)
    const access = res.cookies.find((c) => c.name === '__Host-access_token')!
    t.equal(access.value, res.json().access, 'the access cookie is the pair\'s token')
    t.match(claimsOf(res.json().access), { user_id: user.id, aal: 'aal2', amr: ['hwk', 'user', 'mfa'], auth_time: nowS() })

    const check = (token: string) => app.inject({ url: '/api/auth/check?aal=aal2', headers: bearer(token) })
    t.equal((await check(res.json().access)).statusCode, 204, 'aal2: accepted')
    t.not((await check(passwordAccess)).statusCode, 204, 'a password session of the same user is not (the check can fail)')
    t.equal((await app.inject({ url: '/api/detail', headers: bearer(res.json().access) })).statusCode, 200)
    const events = await auditEvents(app, user.id, ['event', 'outcome', 'detail'], { event: 'login' })
    t.match(events.at(-2), { outcome: 'success', detail: { method: 'passkey', passkey: passkey.id } })
  })

  t.test('a synced passkey (backed up, as a password manager\'s): listed as multiDevice, and its sign-in is swk instead of hwk', async (t) => {
    const { access, user } = await login(app)
    const { challenge_id: challengeId, options } = (await registrationOptions(access)).json()
    const synced: Options = { ...HERE, backedUp: true }
    const { credential, response } = create(options, synced)
    t.equal((await registrationVerify(access, { challenge_id: challengeId, credential: response })).statusCode, 201)
    t.match(await list(access), [{ device_type: 'multiDevice', backed_up: true }])
    // Synced passkeys keep no counter.
    credential.counter = 0
    const res = await passkeySignIn(credential, synced)
    t.equal(res.statusCode, 200)
    t.match(claimsOf(res.json().access), { user_id: user.id, aal: 'aal2', amr: ['swk', 'user', 'mfa'] })
  })

  t.test('a user with TOTP too signs in by a passkey alone: no second step', async (t) => {
    const { user, passkey } = await withTotpAndPasskey()
    t.match((await passwordStep(user)).json(), { mfa_required: true }, 'a password asks for the second step')
    const res = await passkeySignIn(passkey.credential)
    t.equal(res.statusCode, 200)
    t.equal(res.json().mfa_required, undefined)
    t.match(claimsOf(res.json().access), { aal: 'aal2', amr: ['hwk', 'user', 'mfa'] })
  })

  t.test('a password sign-in of a user with a passkey and no TOTP: one step, aal1', async (t) => {
    const { user } = await withPasskey()
    const res = await passwordStep(user)
    t.equal(res.statusCode, 200)
    t.match(claimsOf(res.json().access), { aal: 'aal1', amr: ['pwd'] })
  })

  t.test('the second step of a password sign-in by a passkey: only that user\'s passkeys are offered, another user\'s is refused and the mfa_token lives on', async (t) => {
    const { user, passkey } = await withTotpAndPasskey()
    const stranger = await withPasskey()
    const first = (await passwordStep(user)).json()
    t.match(first, { mfa_required: true, mfa_token: /^[A-Za-z0-9_-]{43}$/ })
    t.same(first.methods, ['totp', 'passkey', 'recovery_code'])

    const offered = await ceremony({ mfa_token: first.mfa_token })
    t.same(offered.options.allowCredentials?.map((c) => c.id), [passkey.credential.id], 'the user\'s passkey only')
    t.same((await ceremony()).options.allowCredentials ?? [], [], 'without an mfa_token: any discoverable passkey')

    // The stranger's passkey answers the user's ceremony: its signature is good, its account is not the one signing in.
    const wrong = await authenticationVerify({ challenge_id: offered.challengeId, credential: assert(stranger.passkey.credential, offered.options, HERE), mfa_token: first.mfa_token })
    t.match(wrong.json(), { status: 401, code: 'passkey_invalid', detail: /not a passkey of the account signing in/ })
    t.equal(wrong.headers['set-cookie'], undefined)
    const failures = await auditEvents(app, user.id, ['detail'], { event: 'login', outcome: 'failure' })
    t.match(failures, [{ detail: { method: 'passkey', reason: /not a passkey of the account signing in/ } }], 'a failed sign-in of the account, in its audit trail')
    // The token is spent only in the transaction of a step that succeeds: the refusal left it
    // open (one of its five tries gone), so the user, who holds it, still finishes the sign-in.
    const res = await passkeySignIn(passkey.credential, {}, { mfa_token: first.mfa_token })
    t.equal(res.statusCode, 200)
    t.match(claimsOf(res.json().access), { user_id: user.id, aal: 'aal2', amr: ['pwd', 'hwk', 'user', 'mfa'], auth_time: nowS() })
    t.match(String(res.headers['set-cookie']), /__Host-access_token=/, 'cookies, as the first step (login) would set them')
    t.match((await authenticationOptions({ mfa_token: first.mfa_token })).json(), { status: 401, code: 'mfa_token_invalid' }, 'spent by the sign-in: no options for it')
    const late = await ceremony()
    t.match((await authenticationVerify({ challenge_id: late.challengeId, credential: assert(passkey.credential, late.options, HERE), mfa_token: first.mfa_token })).json(), { status: 401, code: 'mfa_token_invalid' }, 'nor a second step')
    t.equal((await passkeySignIn(stranger.passkey.credential)).statusCode, 200, 'the stranger\'s passkey was not spent by the refusal')
  })

  t.test('the second step by a passkey of a first step at /api/token: the pair in the body, no cookies, as that first step would', async (t) => {
    const { user, passkey } = await withTotpAndPasskey()
    const first = await postJson(app, '/api/token', { username: user.username, password: user.password })
    t.match(first.json(), { mfa_required: true, methods: ['totp', 'passkey', 'recovery_code'] })
    const res = await passkeySignIn(passkey.credential, {}, { mfa_token: first.json().mfa_token })
    t.equal(res.statusCode, 200)
    t.equal(res.headers['set-cookie'], undefined)
    t.match(claimsOf(res.json().access), { user_id: user.id, aal: 'aal2', amr: ['pwd', 'hwk', 'user', 'mfa'] })
  })

  t.test('an mfa_token\'s refused passkeys count towards its five tries: another account\'s, and the user\'s own refused', async (t) => {
    const { user, passkey } = await withTotpAndPasskey()
    const stranger = await withPasskey()
    const { mfa_token: mfaToken } = (await passwordStep(user)).json()
    const refused: Array<[SoftCredential, Partial<Options>]> = [
      [stranger.passkey.credential, {}], [stranger.passkey.credential, {}],
      [passkey.credential, { userVerified: false }], [passkey.credential, { userVerified: false }],
      [passkey.credential, { origin: 'https://evil.example.net' }]
    ]
    for (const [credential, settings] of refused) {
      t.match((await passkeySignIn(credential, settings, { mfa_token: mfaToken })).json(), { code: 'passkey_invalid' })
    }
    t.match((await authenticationOptions({ mfa_token: mfaToken })).json(), { status: 401, code: 'mfa_token_invalid' }, 'five tries used: no options for it')
    const late = await ceremony()
    t.match((await authenticationVerify({ challenge_id: late.challengeId, credential: assert(passkey.credential, late.options, HERE), mfa_token: mfaToken })).json(), { status: 401, code: 'mfa_token_invalid' }, 'nor a second step by the user\'s own passkey')
  })

  t.test('authentication options with an mfa_token that is not one: 401 mfa_token_invalid', async (t) => {
    t.match((await authenticationOptions({ mfa_token: 'A'.repeat(43) })).json(), { status: 401, code: 'mfa_token_invalid' })
  })

  t.test('refusals of a registration', async (t) => {
    t.test('without user verification: 401 passkey_invalid, nothing kept', async (t) => {
      const { access, user } = await login(app)
      const { challenge_id: challengeId, options } = (await registrationOptions(access)).json()
      const { response } = create(options, { ...HERE, userVerified: false })
      t.match((await registrationVerify(access, { challenge_id: challengeId, credential: response })).json(), { status: 401, code: 'passkey_invalid', detail: /did not verify the user/ })
      t.equal(await storedPasskeys(user.id), 0)
    })
    t.test('made on a page of another origin, or for another RP id: 401, nothing kept', async (t) => {
      const { access, user } = await login(app)
      for (const [settings, detail] of [[{ ...HERE, origin: 'https://evil.example.net' }, /WEBAUTHN_ORIGINS/], [{ ...HERE, rpId: 'evil.example.net' }, /WEBAUTHN_RP_ID/]] as const) {
        const { challenge_id: challengeId, options } = (await registrationOptions(access)).json()
        t.match((await registrationVerify(access, { challenge_id: challengeId, credential: create(options, settings).response })).json(), { status: 401, code: 'passkey_invalid', detail })
      }
      t.equal(await storedPasskeys(user.id), 0)
    })
    t.test('the challenge of another user, or of another session of the same user: 400 passkey_challenge_invalid', async (t) => {
      const victim = await login(app)
      const other = await login(app)
      const otherSession = await login(app, victim.user)
      for (const [who, access] of [['another user', other.access], ['another session', otherSession.access]] as const) {
        const { challenge_id: challengeId, options } = (await registrationOptions(victim.access)).json()
        const { response } = create(options, HERE)
        t.match((await registrationVerify(access, { challenge_id: challengeId, credential: response })).json(), { status: 400, code: 'passkey_challenge_invalid' }, who)
        t.match((await registrationVerify(victim.access, { challenge_id: challengeId, credential: response })).json(), { status: 400, code: 'passkey_challenge_invalid' }, 'spent by that try')
      }
      t.equal(await storedPasskeys(victim.user.id) + await storedPasskeys(other.user.id), 0)
    })
    t.test('a challenge past its 5 minutes: 400', async (t) => {
      const { access, user } = await login(app)
      const { challenge_id: challengeId, options } = (await registrationOptions(access)).json()
      clock.advance(301)
      t.match((await registrationVerify(access, { challenge_id: challengeId, credential: create(options, HERE).response })).json(), { status: 400, code: 'passkey_challenge_invalid' })
      t.equal(await storedPasskeys(user.id), 0)
    })
    t.test('a credential registered already, to this account or another: 409 passkey_exists', async (t) => {
      const owner = await withPasskey()
      const other = await login(app)
      // Attestation `none` signs nothing: the owner's attestationObject (its credential id and
      // key) goes with a clientDataJSON of a new challenge, as an authenticator that ignored
      // excludeCredentials would answer, or as anyone who saw the owner's registration could.
      const again = async (access: string): Promise<LightMyRequestResponse> => {
        const { challenge_id: challengeId, options } = (await registrationOptions(access)).json()
        const { response } = create(options, HERE) as unknown as { response: { response: Record<string, unknown> } }
        const kept = owner.passkey.response as { id: string, rawId: string, response: Record<string, unknown> }
        const copy = { ...response, id: kept.id, rawId: kept.rawId, response: { ...response.response, attestationObject: kept.response.attestationObject } }
        return await registrationVerify(access, { challenge_id: challengeId, credential: copy })
      }
      t.match((await again(other.access)).json(), { status: 409, code: 'passkey_exists' }, 'another account')
      t.match((await again((await passkeyPair(owner.passkey.credential)).access)).json(), { status: 409, code: 'passkey_exists' }, 'the same account')
      t.equal(await storedPasskeys(other.user.id), 0)
      t.equal(await storedPasskeys(owner.user.id), 1)
      t.equal((await passkeySignIn(owner.passkey.credential)).statusCode, 200, 'still the owner\'s')
    })
  })

  t.test('refusals of a sign-in by a passkey, each a failed login in the audit trail', async (t) => {
    const { user, passkey } = await withPasskey()
    const other = await withPasskey()
    const refusals: Array<[string, () => Promise<LightMyRequestResponse>, RegExp]> = [
      ['no user verification', () => passkeySignIn(passkey.credential, { userVerified: false }), /did not verify the user/],
      ['another origin', () => passkeySignIn(passkey.credential, { origin: 'https://evil.example.net' }), /WEBAUTHN_ORIGINS/],
      ['another RP id', () => passkeySignIn(passkey.credential, { rpId: 'evil.example.net' }), /WEBAUTHN_RP_ID/],
      ['no user handle', () => passkeySignIn(passkey.credential, { userHandle: null }), /user handle/],
      ['the user handle of another user', () => passkeySignIn(passkey.credential, { userHandle: other.passkey.credential.userHandle }), /user handle/],
      ['a get answer of type webauthn.create', () => passkeySignIn(passkey.credential, { type: 'webauthn.create' }), /malformed|signature/]
    ]
    for (const [what, attempt, detail] of refusals) {
      const res = await attempt()
      t.equal(res.statusCode, 401, what)
      t.match(res.json(), { code: 'passkey_invalid', detail }, what)
      t.equal(res.headers['set-cookie'], undefined, what)
    }
    const failures = await auditEvents(app, user.id, ['detail'], { event: 'login', outcome: 'failure' })
    // No user handle is refused before the passkey is looked up: no account to record it under.
    t.equal(failures.length, refusals.length - 1)
    t.equal((await passkeySignIn(passkey.credential)).statusCode, 200, 'the passkey itself still signs in')
  })

  t.test('a passkey no account has: 401', async (t) => {
    // Made for options the service never gave: it never saw this credential.
    const { credential } = create({ challenge: 'AAAA', user: { id: 'AAAA' } }, HERE)
    t.match((await passkeySignIn(credential)).json(), { status: 401, code: 'passkey_unknown', detail: /^No account has this passkey/ })
  })

  t.test('a replayed assertion: the second answer is 400 passkey_challenge_invalid', async (t) => {
    const { passkey } = await withPasskey()
    const { challengeId, options } = await ceremony()
    const body = { challenge_id: challengeId, credential: assert(passkey.credential, options, HERE) }
    t.equal((await authenticationVerify(body)).statusCode, 200)
    t.match((await authenticationVerify(body)).json(), { status: 400, code: 'passkey_challenge_invalid' })
  })

  t.test('a challenge is spent by a refused answer too', async (t) => {
    const { passkey } = await withPasskey()
    const { challengeId, options } = await ceremony()
    t.equal((await authenticationVerify({ challenge_id: challengeId, credential: assert(passkey.credential, options, { ...HERE, userVerified: false }) })).statusCode, 401)
    t.match((await authenticationVerify({ challenge_id: challengeId, credential: assert(passkey.credential, options, HERE) })).json(), { status: 400, code: 'passkey_challenge_invalid' })
  })

  t.test('a challenge past its 5 minutes: 400', async (t) => {
    const { passkey } = await withPasskey()
    const { challengeId, options } = await ceremony()
    clock.advance(301)
    t.match((await authenticationVerify({ challenge_id: challengeId, credential: assert(passkey.credential, options, HERE) })).json(), { status: 400, code: 'passkey_challenge_invalid' })
  })

  t.test('a signature counter that went back (a copied authenticator): 401, audited as passkey_counter_regressed', async (t) => {
    const { user, passkey } = await withPasskey()
    t.equal((await passkeySignIn(passkey.credential)).statusCode, 200, 'counter 1')
    t.equal((await passkeySignIn(passkey.credential)).statusCode, 200, 'counter 2')
    passkey.credential.counter = 2
    t.match((await passkeySignIn(passkey.credential)).json(), { status: 401, code: 'passkey_invalid', detail: /counter/ }, 'the same counter again')
    passkey.credential.counter = 1
    t.match((await passkeySignIn(passkey.credential)).json(), { status: 401, code: 'passkey_invalid', detail: /counter/ }, 'a counter behind')
    passkey.credential.counter = 0
    t.match((await passkeySignIn(passkey.credential)).json(), { status: 401, code: 'passkey_invalid' }, 'nought, once it showed a counter')
    const events = await auditEvents(app, user.id, ['outcome', 'detail'], { event: 'passkey_counter_regressed' })
    t.match(events, [
      { outcome: 'failure', detail: { passkey: passkey.id, stored: 2, shown: 2 } },
      { outcome: 'failure', detail: { passkey: passkey.id, stored: 2, shown: 1 } },
      { outcome: 'failure', detail: { passkey: passkey.id, stored: 2, shown: 0 } }
    ])
    t.equal((await auditEvents(app, user.id, ['id'], { event: 'login', outcome: 'failure' })).length, 3, 'each a failed login too')
    passkey.credential.counter = 3
    t.equal((await passkeySignIn(passkey.credential)).statusCode, 200, 'a counter ahead of the stored one signs in')
  })

  t.test('a passkey that keeps no counter (nought, as synced ones do) signs in again and again', async (t) => {
    const { passkey } = await withPasskey()
    passkey.credential.counter = 0
    t.equal((await passkeySignIn(passkey.credential)).statusCode, 200)
    t.equal((await passkeySignIn(passkey.credential)).statusCode, 200)
  })

  t.test('malformed bodies: 400 validation_failed, never a 500', async (t) => {
    const { access, passkey } = await withPasskey()
    const { challengeId, options } = await ceremony()
    const good = assert(passkey.credential, options, HERE) as { response: Record<string, unknown> } & Record<string, unknown>
    const empty = await app.inject({ method: 'POST', url: '/api/auth/passkeys/authentication/verify', headers: { 'content-type': 'application/json' } })
    t.match(empty.json(), { status: 400, code: 'invalid_json' }, 'no body')
    const bodies: Array<[string, unknown]> = [
      ['no credential', { challenge_id: challengeId }],
      ['no challenge_id', { credential: good }],
      ['a challenge_id of another shape', { challenge_id: 'short', credential: good }],
      ['an id that is not base64url', { challenge_id: challengeId, credential: { ...good, id: 'not+base64/url==' } }],
      ['a rawId that is a number', { challenge_id: challengeId, credential: { ...good, rawId: 12 } }],
      ['another type', { challenge_id: challengeId, credential: { ...good, type: 'password' } }],
      ['no signature', { challenge_id: challengeId, credential: { ...good, response: { ...good.response, signature: undefined } } }],
      ['a signature that is not base64url', { challenge_id: challengeId, credential: { ...good, response: { ...good.response, signature: 'a b' } } }],
      ['a response that is a string', { challenge_id: challengeId, credential: { ...good, response: 'x' } }],
      ['an unknown property', { challenge_id: challengeId, credential: good, extra: 1 }],
      ['an mfa_token of another shape', { challenge_id: challengeId, credential: good, mfa_token: 'x' }]
    ]
    for (const [what, body] of bodies) {
      const res = await authenticationVerify(body as Record<string, unknown>)
      t.equal(res.statusCode, 400, what)
      t.equal(res.json().code, 'validation_failed', what)
    }
    // Well-formed as the schema sees it, but not WebAuthn inside: the library's refusal, a 401.
    const garbage = { ...good, response: { ...good.response, clientDataJSON: 'AAAA', authenticatorData: 'AAAA' } }
    const judged = await authenticationVerify({ challenge_id: (await ceremony()).challengeId, credential: garbage })
    t.match(judged.json(), { status: 401, code: 'passkey_invalid' }, 'garbage inside: refused, not a 500')

    const aal2 = (await passkeyPair(passkey.credential)).access
    const { challenge_id: regId, options: regOptions } = (await registrationOptions(aal2)).json()
    const made = create(regOptions, HERE).response as { response: Record<string, unknown> } & Record<string, unknown>
    const registrations: Array<[string, unknown]> = [
      ['no attestationObject', { challenge_id: regId, credential: { ...made, response: { ...made.response, attestationObject: undefined } } }],
      ['transports not a list', { challenge_id: regId, credential: { ...made, response: { ...made.response, transports: { usb: true } } } }],
      ['an empty name', { challenge_id: regId, credential: made, name: '' }],
      ['a name of 65 characters', { challenge_id: regId, credential: made, name: 'x'.repeat(65) }],
      ['an unknown property', { challenge_id: regId, credential: made, user_id: 1 }]
    ]
    for (const [what, body] of registrations) {
      const res = await registrationVerify(aal2, body as Record<string, unknown>)
      t.equal(res.statusCode, 400, what)
      t.equal(res.json().code, 'validation_failed', what)
    }
    const garbled = await registrationVerify(aal2, { challenge_id: regId, credential: { ...made, response: { ...made.response, attestationObject: 'AAAA' } } })
    t.match(garbled.json(), { status: 401, code: 'passkey_invalid' }, 'an attestationObject that is no CBOR: refused, not a 500')
    t.match((await app.inject({ method: 'PATCH', url: `/api/auth/passkeys/${passkey.id}`, payload: { name: { first: 'x' } }, headers: bearer(access) })).json(), { status: 400, code: 'validation_failed' })
    t.match((await app.inject({ method: 'DELETE', url: '/api/auth/passkeys/not-a-uuid', headers: bearer(access) })).json(), { status: 400, code: 'validation_failed' })
  })

  t.test('recency: registration options need a sign-in within 10 minutes, and aal2 once the user can sign in at aal2', async (t) => {
    const { access } = await login(app)
    clock.advance(11 * 60)
    t.match((await registrationOptions(access)).json(), { status: 403, code: 'reauthentication_required' }, 'signed in 11 minutes ago')

    const { passkey, access: passwordAccess } = await withPasskey()
    t.match((await registrationOptions(passwordAccess)).json(), { status: 403, code: 'aal2_required' }, 'a password session of a user with a passkey')
    const byPasskey = await passkeyPair(passkey.credential)
    t.equal((await registrationOptions(byPasskey.access)).statusCode, 200, 'a passkey session')

    const { access: totpAccess } = await login(app)
    const totp = await enrolTotp(totpAccess)
    t.match((await registrationOptions(totpAccess)).json(), { status: 401 }, 'the aal1 session enrolment replaced is over')
    t.equal((await registrationOptions(totp.pair.access)).statusCode, 200, 'the aal2 session of a TOTP user')
  })

  t.test('the user\'s list, rename and removal; a mail on each addition and removal', async (t) => {
    const { user, passkey, access } = await withPasskey('laptop')
    const passkeys = await list(access)
    t.equal(passkeys.length, 1)
    t.same(Object.keys(passkeys[0]!).sort(), ['aaguid', 'backed_up', 'created_at', 'device_type', 'id', 'last_used_at', 'name', 'transports'])
    t.match(passkeys[0], {
      id: passkey.id,
      name: 'laptop',
      device_type: 'singleDevice',
      backed_up: false,
      aaguid: '00000000-0000-0000-0000-000000000000',
      transports: ['internal'],
      created_at: String,
      last_used_at: null
    })
    t.match((await inbox.find(user.email, /a passkey \(laptop\) was added/)).subject, 'The passkeys of your account changed')
    const signedInBefore = await lastSignIn(user.id)
    const pair = await passkeyPair(passkey.credential)
    t.type((await list(access))[0]!.last_used_at, 'string', 'its last use')
    t.ok(await lastSignIn(user.id) > signedInBefore, 'and the account\'s last sign-in')

    const rename = (token: string, id: string, name: string) => app.inject({ method: 'PATCH', url: `/api/auth/passkeys/${id}`, payload: { name }, headers: bearer(token) })
    t.equal((await rename(access, passkey.id, 'old laptop')).statusCode, 204)
    t.equal((await list(access))[0]!.name, 'old laptop')
    const stranger = await login(app)
    t.match((await rename(stranger.access, passkey.id, 'mine')).json(), { status: 404, code: 'not_found' }, 'another user\'s passkey')
    const strangerAal2 = await passkeyPair((await withPasskey()).passkey.credential)
    t.match((await remove(strangerAal2.access, passkey.id)).json(), { status: 404, code: 'not_found' }, 'another user\'s passkey, from an aal2 session')
    t.equal((await list(access))[0]!.name, 'old laptop')
    t.match(await auditEvents(app, user.id, ['detail'], { event: 'passkey_renamed' }), [{ detail: { passkey: passkey.id } }])

    t.match((await remove(access, passkey.id)).json(), { status: 403, code: 'aal2_required' }, 'from the password session')
    const second = await addPasskey(pair.access, 'phone')
    clock.advance(11 * 60)
    t.match((await remove(pair.access, passkey.id)).json(), { status: 403, code: 'reauthentication_required' }, 'an aal2 session of 11 minutes ago')
    const fresh = await passkeyPair(second.credential)
    t.equal((await remove(fresh.access, passkey.id)).statusCode, 204)
    t.match((await remove(fresh.access, passkey.id)).json(), { status: 404 }, 'gone')
    t.match((await passkeySignIn(passkey.credential)).json(), { status: 401, code: 'passkey_unknown', detail: /^No account has this passkey/ }, 'it no longer signs in')
    t.same((await list(access)).map((p) => p.name), ['phone'])
    t.ok(await inbox.find(user.email, /the passkey old laptop was removed/), 'the removal mailed')
    t.match(await auditEvents(app, user.id, ['event', 'detail'], { event: 'passkey_%' }), [
      { event: 'passkey_added', detail: { passkey: passkey.id } },
      { event: 'passkey_renamed' },
      { event: 'passkey_added', detail: { passkey: second.id } },
      { event: 'passkey_removed', detail: { passkey: passkey.id } }
    ])
  })

  t.test('the last way into an account is not removed: 409 last_way_in', async (t) => {
    const { user, passkey } = await withPasskey()
    // An account with no password (as an upstream provider's user is): the API has no way to drop
    // one, so SQL does; neither EMAIL_SIGN_IN nor APP_RESET_URL is on here, so the passkey is its only way in.
    await app.db.updateTable('users').set({ password_hash: null }).where('id', '=', user.id).execute()
    const pair = await passkeyPair(passkey.credential)
    t.match((await remove(pair.access, passkey.id)).json(), { status: 409, code: 'last_way_in' })
    t.equal(await storedPasskeys(user.id), 1, 'kept')
    t.equal((await passkeySignIn(passkey.credential)).statusCode, 200, 'and still signs in')

    const second = await addPasskey(pair.access)
    t.equal((await remove(pair.access, passkey.id)).statusCode, 204, 'with another passkey: removed')
    t.match((await remove(pair.access, second.id)).json(), { status: 409, code: 'last_way_in' }, 'the other is the last now')
  })

  t.test('operators list and remove a user\'s passkeys (admin:users:read, admin:users:write)', async (t) => {
    const { user, passkey, access } = await withPasskey('yubikey')
    const other = await withPasskey()
    const reader = await operator(app, ['admin:users:read'])
    const writer = await operator(app, ALL_ADMIN_SCOPES)
    const listed = await app.inject({ url: `/api/admin/users/${user.id}/passkeys`, headers: bearer(reader.token) })
    t.equal(listed.statusCode, 200)
    t.same(listed.json().passkeys, await list(access), 'what the user sees')
    t.match(listed.json().passkeys, [{ id: passkey.id, name: 'yubikey' }])

    const removeUrl = (userId: number, id: string) => `/api/admin/users/${userId}/passkeys/${id}?reason=${encodeURIComponent('lost the key, ticket 42')}`
    const denied = await app.inject({ method: 'DELETE', url: removeUrl(user.id, passkey.id), headers: bearer(reader.token) })
    t.match(denied.json(), { status: 403, code: 'insufficient_scope', detail: /admin:users:write/ })
    const noRead = await operator(app, ['admin:sessions'])
    t.match((await app.inject({ url: `/api/admin/users/${user.id}/passkeys`, headers: bearer(noRead.token) })).json(), { status: 403, code: 'insufficient_scope' })
    t.match((await app.inject({ method: 'DELETE', url: removeUrl(user.id, other.passkey.id), headers: bearer(writer.token) })).json(), { status: 404 }, 'a passkey of another user')
    t.match((await app.inject({ method: 'DELETE', url: `/api/admin/users/${user.id}/passkeys/${passkey.id}`, headers: bearer(writer.token) })).json(), { status: 400, code: 'validation_failed' }, 'a reason is required')
    t.equal(await storedPasskeys(user.id), 1)

    t.equal((await app.inject({ method: 'DELETE', url: removeUrl(user.id, passkey.id), headers: bearer(writer.token) })).statusCode, 204)
    t.same(await list(access), [])
    t.match((await passkeySignIn(passkey.credential)).json(), { status: 401, code: 'passkey_unknown' })
    t.equal((await passkeySignIn(other.passkey.credential)).statusCode, 200, 'the other user\'s passkey stays')
    t.match(await auditEvents(app, user.id, ['detail'], { event: 'passkey_removed' }), [{ detail: { client_id: writer.id, reason: 'lost the key, ticket 42', passkey: passkey.id } }])
    t.ok(await inbox.find(user.email, /an operator removed the passkey yubikey/))
  })

  t.test('a disabled account\'s passkey does not sign in; a deleted account\'s passkeys are gone', async (t) => {
    const writer = await operator(app, ALL_ADMIN_SCOPES)
    const disabled = await withPasskey()
    t.equal((await postJson(app, `/api/admin/users/${disabled.user.id}/disable`, { reason: 'a test' }, bearer(writer.token))).statusCode, 200)
    const counterOf = async () => (await app.db.selectFrom('passkeys').select('counter').where('user_id', '=', disabled.user.id).executeTakeFirstOrThrow()).counter
    const [counter, signedIn] = [await counterOf(), await lastSignIn(disabled.user.id)]
    const refused = await passkeySignIn(disabled.passkey.credential)
    t.equal(refused.statusCode, 401)
    t.equal(refused.headers['set-cookie'], undefined)
    t.match(await auditEvents(app, disabled.user.id, ['detail'], { event: 'login', outcome: 'failure' }), [{ detail: { method: 'passkey', reason: 'inactive' } }])
    t.equal(await storedPasskeys(disabled.user.id), 1, 'kept for when the account is enabled again')
    t.same([await counterOf(), await lastSignIn(disabled.user.id)], [counter, signedIn], 'neither its counter taken nor a sign-in recorded')

    const deleted = await withPasskey()
    t.equal((await app.inject({ method: 'DELETE', url: `/api/admin/users/${deleted.user.id}?reason=gone`, headers: bearer(writer.token) })).statusCode, 204)
    t.equal(await storedPasskeys(deleted.user.id), 0)
    t.match((await passkeySignIn(deleted.passkey.credential)).json(), { status: 401, code: 'passkey_unknown', detail: /^No account has this passkey/ })
  })

  t.test('a pre-claimed account: the address\'s owner proves it, the squatter\'s passkey is gone and the notice says so', async (t) => {
    const squatter = uniqueUser('squatter')
    t.equal((await postJson(app, '/api/auth/register', squatter)).statusCode, 201)
    const { access } = await login(app, squatter)
    const { credential } = await addPasskey(access, 'squatter key')
    t.equal((await passkeySignIn(credential)).statusCode, 200, 'the squatter\'s passkey signs in before')

    const verification = await inbox.find(squatter.email, /#token=/)
    t.same((await postJson(app, '/api/auth/email/verify', { token: tokenOf(verification) })).json(), { email_verified: true, password_removed: true })
    const user = await app.db.selectFrom('users').select('id').where('email', '=', squatter.email).executeTakeFirstOrThrow()
    t.equal(await storedPasskeys(user.id), 0)
    t.match((await passkeySignIn(credential)).json(), { status: 401, code: 'passkey_unknown', detail: /^No account has this passkey/ })
    t.match((await inbox.find(squatter.email, /proven for the first time/)).text, /1 passkey/)
    t.match(await auditEvents(app, user.id, ['detail'], { event: 'address_proven' }), [{ detail: { by: 'email_verification', removed: { passkeys: 1 } } }])
  })
})
