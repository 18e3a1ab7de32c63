import type { FastifyInstance } from 'fastify'
import { randomInt } from 'node:crypto'
import t from 'tap'
import { generateSync } from 'otplib'
import { auditEvents, bearer, build, freshDatabase, login, postJson, tally, TestClock } from './helper.ts'

// Second steps sent at once (issue 26, items 1, 5 and 9): every limit of the second step counts a
// try before its code is judged, in one guarded statement, so that no number of parallel tries
// gets more codes judged than the limits allow; a step spends its mfa_token (or a reset's mail)
// before its code, in one transaction; a code used already is not a guess. Both engines; on
// PostgreSQL the requests alternate between two replicas (two apps, two pools) of one database.

const postgres = process.env.DB_ENGINE === 'postgres'

t.test('second steps at once', async (t) => {
  const clock = new TestClock()
  const database = await freshDatabase(t)
  const env = { APP_RESET_URL: 'http://127.0.0.1:9/reset' }
  const first = await build(t, { clock, database, env })
  const apps: FastifyInstance[] = [first, postgres ? await build(t, { clock, database, env }) : first]
  /** The app of the i-th request: the two replicas in turn. */
  const at = (i: number): FastifyInstance => apps[i % 2]!
  const nowS = (): number => Math.floor(clock.now().getTime() / 1000)
  const codeOf = (secret: string): string => generateSync({ secret, epoch: nowS() })
  const wrongOf = (secret: string): string => codeOf(secret) === '000000' ? '111111' : '000000'

  /** A user with a verified TOTP factor and a proven address: the secret, the aal2 pair, the recovery codes. */
  async function enrolled () {
    const { access, user } = await login(first)
    await first.db.updateTable('users').set({ email_verified_at: new Date() }).where('id', '=', user.id).execute()
    const added = (await postJson(first, '/api/auth/mfa/totp', {}, bearer(access))).json()
    const verified = (await postJson(first, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code: codeOf(added.secret) }, bearer(access))).json()
    // The code of this step was taken: the next step's codes are fresh.
    clock.advance(30)
    return { user, secret: added.secret as string, access: verified.access as string, recoveryCodes: verified.recovery_codes as string[] }
  }
  const mfaTokenOf = async (user: { username: string, password: string }): Promise<string> =>
    (await postJson(first, '/api/auth/login', { identifier: user.username, password: user.password })).json().mfa_token
  const secondStep = (i: number, mfaToken: string, code: string, method = 'totp') => postJson(at(i), '/api/auth/mfa/verify', { mfa_token: mfaToken, method, code })
  const stepUp = (i: number, access: string, code: string) => postJson(at(i), '/api/auth/mfa/verify', { method: 'totp', code }, bearer(access))
  /** The user's failed second steps in the audit trail: judged ones, and the ones refused while locked. */
  async function failures (userId: number): Promise<{ judged: number, refused: number }> {
    for (const app of apps) await app.audit.flush()
    const rows = await auditEvents(first, userId, ['detail'], { event: 'mfa_verify', outcome: 'failure' })
    const refused = rows.filter((row) => row.detail?.reason === 'locked').length
    return { judged: rows.length - refused, refused }
  }

  t.test('a hundred wrong codes at once: ten are judged, the tenth locks, and the right code is refused until the lock ends', async (t) => {
    const { user, secret, access } = await enrolled()
    const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => stepUp(i, access, wrongOf(secret))))
    t.same(tally(answers), { '400 mfa_code_invalid': 9, '403 mfa_locked': 91 })
    t.same(await failures(user.id), { judged: 10, refused: 90 }, 'ten judged (the tenth locked); ninety refused unjudged')
    t.match((await stepUp(0, access, codeOf(secret))).json(), { status: 403, code: 'mfa_locked' }, 'the right code, while locked')
    clock.advance(15 * 60)
    t.equal((await secondStep(1, await mfaTokenOf(user), codeOf(secret))).statusCode, 200, 'after 15 minutes it works')
  })

  t.test('a hundred wrong codes at once on one mfa_token: its five tries are judged, no more', async (t) => {
    const { user, secret } = await enrolled()
    const token = await mfaTokenOf(user)
    const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => secondStep(i, token, wrongOf(secret))))
    t.same(tally(answers), { '400 mfa_code_invalid': 5, '401 mfa_token_invalid': 95 })
    t.same(await failures(user.id), { judged: 5, refused: 0 })
    const { mfa_failures: counted } = await first.db.selectFrom('users').select('mfa_failures').where('id', '=', user.id).executeTakeFirstOrThrow()
    t.equal(counted, 5, 'five count towards the lock')
  })

  t.test('eight right recovery codes at once on one mfa_token: one sign-in, one code spent', async (t) => {
    const { user, recoveryCodes } = await enrolled()
    const token = await mfaTokenOf(user)
    const answers = await Promise.all(recoveryCodes.slice(0, 8).map((code, i) => secondStep(i, token, code, 'recovery_code')))
    t.same(tally(answers), { 200: 1, '401 mfa_token_invalid': 7 })
    const left = await first.db.selectFrom('recovery_codes').select('id').where('user_id', '=', user.id).where('used_at', 'is', null).execute()
    t.equal(left.length, 9, 'nine of ten left')
  })

  t.test('one right code twenty times at once: one sign-in; the others are a code used already, never a guess: no lock', async (t) => {
    const { user, secret } = await enrolled()
    const tokens = await Promise.all(Array.from({ length: 20 }, () => mfaTokenOf(user)))
    const code = codeOf(secret)
    const each = await Promise.all(tokens.map((token, i) => secondStep(i, token, code)))
    const answers = tally(each)
    t.equal(answers['200'], 1, 'one signs in')
    t.equal(answers['400 mfa_code_invalid'], undefined, 'none is a wrong code')
    // Ten at most are judged at once (the lock's count holds tries in flight): the rest wait their turn as a lock would.
    t.equal((answers['400 mfa_code_used'] ?? 0) + (answers['403 mfa_locked'] ?? 0), 19)
    const { mfa_failures: counted, mfa_locked_until: locked } = await first.db.selectFrom('users').select(['mfa_failures', 'mfa_locked_until']).where('id', '=', user.id).executeTakeFirstOrThrow()
    t.same({ counted, locked }, { counted: 0, locked: null }, 'nothing counted, no lock')
    clock.advance(30)
    t.equal((await secondStep(0, await mfaTokenOf(user), codeOf(secret))).statusCode, 200, 'the next code signs in')
    const usedOne = tokens[each.findIndex((res) => res.statusCode === 400)]!
    const { attempts } = await first.db.selectFrom('one_time_codes').select('attempts').where('id', '=', (await first.oneTimeCodes.inspect('mfa_challenge', usedOne))!.id).executeTakeFirstOrThrow()
    t.equal(attempts, 0, 'a token whose try was a used code keeps its tries')
  })

  t.test('two resets at once by one mail, each with a right recovery code: one resets, one code is spent', async (t) => {
    const { user, recoveryCodes } = await enrolled()
    // The reset mail's secret, as the outbox's worker makes it (no SMTP here: its token from the issue).
    const { token } = await first.oneTimeCodes.issue({ purpose: 'password_reset', userId: user.id, ttlS: 600, with: { token: true, code: true } })
    const answers = await Promise.all(recoveryCodes.slice(0, 6).map((code, i) =>
      postJson(at(i), '/api/auth/password/reset', { token, new_password: `a new password number ${i}`, mfa_method: 'recovery_code', mfa_code: code })))
    t.same(Object.entries(tally(answers)).sort(), [['204', 1], ['400 reset_token_invalid', 5]])
    const left = await first.db.selectFrom('recovery_codes').select('id').where('user_id', '=', user.id).where('used_at', 'is', null).execute()
    t.equal(left.length, 9)
  })
})

t.test('the second step is limited per account, from any address', async (t) => {
  const app = await build(t, { env: { RATE_LIMIT_ENABLED: 'true', TRUST_PROXY: '127.0.0.1', RATE_LIMIT_CREDENTIALS_MAX: '1000', RATE_LIMIT_IDENTIFIER_MAX: '5' } })
  const someIp = (): string => `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`
  const { access, user } = await login(app)
  await app.db.updateTable('users').set({ email_verified_at: new Date() }).where('id', '=', user.id).execute()
  const added = (await postJson(app, '/api/auth/mfa/totp', {}, bearer(access))).json()
  const code = generateSync({ secret: added.secret })
  const aal2 = (await postJson(app, `/api/auth/mfa/totp/${added.factor_id}/verify`, { code }, bearer(access))).json().access
  const wrong = code === '000000' ? '111111' : '000000'
  const statuses: number[] = []
  // Of the account's five: the sign-in and the factor's verification above, the sign-in below, two second steps.
  const mfaToken = (await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password }, { 'x-forwarded-for': someIp() })).json().mfa_token
  for (let i = 0; i < 3; i++) statuses.push((await postJson(app, '/api/auth/mfa/verify', { mfa_token: mfaToken, method: 'totp', code: wrong }, { 'x-forwarded-for': someIp() })).statusCode)
  t.same(statuses, [400, 400, 429], 'counted with the account\'s sign-ins, whatever the address')
  t.equal((await postJson(app, '/api/auth/mfa/verify', { method: 'totp', code: wrong }, { ...bearer(aal2), 'x-forwarded-for': someIp() })).statusCode, 429, 'a step-up of its session too')
})
