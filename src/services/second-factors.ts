import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import { generateSecret, generateURI, verifySync } from 'otplib'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import {
  Aal2RequiredError, InvalidCredentialsError, MfaCodeInvalidError, MfaLockedError, MfaTokenInvalidError, NotFoundError, RecentSignInRequiredError
} from '../errors.ts'
import { epochSeconds, seconds, type Clock } from '../lib/clock.ts'
import type { MailTemplates } from '../lib/mail-templates.ts'
import { SecretBox } from '../lib/secret-box.ts'
import { subkey } from '../lib/subkeys.ts'
import type { TokenPair } from '../schemas.ts'
import { hasSecondFactor } from './accounts.ts'
import type { AuditEventName, AuditTrail, Caller } from './audit.ts'
import { authContextOf, type AuthContext, type TokenClaims } from './claims.ts'
import type { OneTimeCodes } from './one-time-codes.ts'
import type { Outbox } from './outbox.ts'
import type { Credential, Executor, Sessions } from './sessions.ts'

/** How a second step is proven: a code of the authenticator app, or one of the recovery codes. */
export type SecondFactorMethod = 'totp' | 'recovery_code'

/** A second factor as its user sees it. */
export interface FactorInfo { id: string, kind: 'totp', created_at: Date, verified: boolean }

/** What a first factor that needs a second answers: no pair, a token for the second step. */
export interface MfaChallenge { mfaToken: string, methods: SecondFactorMethod[] }

/** A first factor passed: its user and credential, its methods (RFC 8176), and whether its answer sets cookies. */
export interface FirstFactor { credential: Credential, amr: string[], cookies: boolean }

export interface SecondFactorsDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'SECRET_KEY' | 'TOTP_ISSUER'>
  sessions: Sessions
  oneTimeCodes: OneTimeCodes
  outbox: Outbox
  templates: MailTemplates
  audit: AuditTrail
}

// RFC 6238's defaults, as every authenticator app reads an otpauth URI: SHA-1, 6 digits, 30 s;
// a code of the step before or after is taken too (clock drift), each step at most once.
const STEP_S = 30
// An mfa_token: 5 minutes, 5 tries.
const CHALLENGE_TTL_S = 300
const CHALLENGE_TRIES = 5
// Failed second steps in a row (whatever the token, the session) that lock them, and for how long.
const LOCK_AFTER = 10
const LOCK_S = 15 * 60
const RECOVERY_CODES = 10
// Removing a factor takes a second factor proven within this long.
const RECENT_S = 10 * 60

// A recovery code: 80 random bits as 20 hex digits in groups of five; typed back in any case,
// with or without the dashes and spaces.
const newRecoveryCode = (): string => randomBytes(10).toString('hex').match(/.{5}/g)!.join('-')
const normalizeRecoveryCode = (code: string): string => code.toLowerCase().replace(/[\s-]/g, '')

// The methods of a sign-in, each once, in order (RFC 8176 §2).
const methods = (...amr: string[]): string[] => [...new Set(amr)]

/**
 * Second factors: TOTP (RFC 6238) with the last accepted time step stored, so a code is taken
 * once (two parallel verifies of one code: one success); recovery codes, one HMAC'd row each.
 * A user with a verified factor signs in in two steps: the first factor gets an mfa_token (a
 * one-time secret, 5 tries, 5 minutes), the second gets the pair, aal2. Ten failed second steps
 * in a row lock them for 15 minutes. A session that becomes aal2 (step-up, enrolment) is a new
 * session, the old one ended: a session id is renewed when its privilege changes (OWASP).
 */
export function createSecondFactors ({ db, clock, config, sessions, oneTimeCodes, outbox, templates, audit }: SecondFactorsDeps) {
  const box = new SecretBox(config.SECRET_KEY, 'mfa-secrets')
  const recoveryKey = subkey(config.SECRET_KEY, 'recovery-codes')
  const recoveryHash = (userId: number, code: string): string => createHmac('sha256', recoveryKey).update(`${userId}:${normalizeRecoveryCode(code)}`).digest('base64url')
  // What a challenge keeps of the password its first step checked: a digest, so that a password
  // changed in between makes the second step fail.
  const passwordDigest = (hash: string): string => createHash('sha256').update(hash).digest('base64url')
  const nowS = (): number => epochSeconds(clock.now())

  const record = (event: AuditEventName, userId: number, caller: Caller, detail?: Record<string, unknown>, outcome: 'success' | 'failure' = 'success'): void => {
    audit.record({ event, outcome, userId, ...(detail === undefined ? {} : { detail }) }, caller)
  }

  outbox.define('second_factor_changed', async (payload, trx) => {
    const user = await trx.selectFrom('users').select(['username', 'email']).where('id', '=', Number(payload.userId)).where('deleted_at', 'is', null).executeTakeFirst()
    if (user === undefined) return undefined
    return { mail: templates.render('second-factor-changed', user.email, { username: user.username, change: String(payload.change), at: String(payload.at) }) }
  })
  // The notice of a change, queued with it; sent once it committed (outbox.kick).
  const notify = (userId: number, change: string, executor: Executor = db): Promise<void> =>
    outbox.enqueue('second_factor_changed', { userId, change, at: clock.now().toISOString() }, executor)

  const verifiedFactors = (userId: number) => db.selectFrom('mfa_factors').select(['id', 'secret_sealed'])
    .where('user_id', '=', userId).where('verified_at', 'is not', null)

  async function hasFactor (userId: number, executor: Executor = db): Promise<boolean> {
    return (await executor.selectFrom('users').select(hasSecondFactor).where('id', '=', userId).executeTakeFirst())?.second_factor === true
  }

  // Takes a TOTP code of one of `factors` once: the time step it matched is stored by a guarded
  // UPDATE, which a second use of the code (or of an older one) finds already past.
  async function acceptTotp (factors: Array<{ id: string, secret_sealed: string }>, code: string): Promise<string | undefined> {
    const now = nowS()
    for (const factor of factors) {
      const result = verifySync({ secret: box.open(factor.secret_sealed, factor.id), token: code, epoch: now, epochTolerance: STEP_S })
      if (!result.valid) continue
      const step = Math.floor(now / STEP_S) + result.delta
      const taken = await db.updateTable('mfa_factors').set({ last_step: step })
        .where('id', '=', factor.id)
        .where((eb) => eb.or([eb('last_step', 'is', null), eb('last_step', '<', String(step))]))
        .executeTakeFirst()
      if (taken.numUpdatedRows === 1n) return factor.id
    }
    return undefined
  }

  async function spendRecoveryCode (userId: number, code: string): Promise<boolean> {
    const spent = await db.updateTable('recovery_codes').set({ used_at: clock.db() })
      .where('user_id', '=', userId).where('code_hash', '=', recoveryHash(userId, code)).where('used_at', 'is', null)
      .executeTakeFirst()
    return spent.numUpdatedRows === 1n
  }

  async function recoveryCodesLeft (userId: number): Promise<number> {
    const { left } = await db.selectFrom('recovery_codes').select(sql<string>`count(*)`.as('left'))
      .where('user_id', '=', userId).where('used_at', 'is', null).executeTakeFirstOrThrow()
    return Number(left)
  }

  // Ten new recovery codes in place of the old ones: shown once, kept as HMACs.
  async function newRecoveryCodes (userId: number, executor: Executor): Promise<string[]> {
    const codes = Array.from({ length: RECOVERY_CODES }, newRecoveryCode)
    await executor.deleteFrom('recovery_codes').where('user_id', '=', userId).execute()
    await executor.insertInto('recovery_codes')
      .values(codes.map((code) => ({ id: randomUUID(), user_id: userId, code_hash: recoveryHash(userId, code), created_at: clock.db() })))
      .execute()
    return codes
  }

  /**
   * A second step of the user: refused while locked; a wrong code counts towards the lock (and
   * `onWrong`, a challenge's own tries), a right one clears the count. A recovery code used is
   * mailed about.
   */
  async function prove (userId: number, method: SecondFactorMethod, code: string, caller: Caller, onWrong?: () => Promise<void>): Promise<void> {
    const state = await db.selectFrom('users').select(sql<boolean>`coalesce(mfa_locked_until > ${clock.db()}, false)`.as('locked'))
      .where('id', '=', userId).executeTakeFirst()
    if (state?.locked !== false) {
      if (state !== undefined) record('mfa_verify', userId, caller, { method, reason: 'locked' }, 'failure')
      throw new MfaLockedError()
    }
    const right = method === 'totp'
      ? /^[0-9]{6}$/.test(code) && await acceptTotp(await verifiedFactors(userId).execute(), code) !== undefined
      : await spendRecoveryCode(userId, code)
    if (!right) {
      await onWrong?.()
      const after = await db.updateTable('users')
        .set((eb) => ({
          mfa_failures: sql<number>`case when ${eb.ref('mfa_failures')} + 1 >= ${LOCK_AFTER} then 0 else ${eb.ref('mfa_failures')} + 1 end`,
          mfa_locked_until: sql<Date>`case when ${eb.ref('mfa_failures')} + 1 >= ${LOCK_AFTER} then ${clock.db()} + ${seconds(LOCK_S)} else null end`
        }))
        .where('id', '=', userId)
        .returning(sql<boolean>`mfa_locked_until is not null`.as('locked'))
        .executeTakeFirst()
      record('mfa_verify', userId, caller, { method, ...(after?.locked === true ? { locked_for_s: LOCK_S } : {}) }, 'failure')
      throw after?.locked === true ? new MfaLockedError() : new MfaCodeInvalidError()
    }
    await db.updateTable('users').set({ mfa_failures: 0 }).where('id', '=', userId).where('mfa_failures', '<>', 0).execute()
    record('mfa_verify', userId, caller, { method })
    if (method === 'recovery_code') {
      const left = await recoveryCodesLeft(userId)
      record('recovery_code_used', userId, caller, { left })
      await notify(userId, `a recovery code was used (${left} left)`)
      outbox.kick()
    }
  }

  // The session of a step-up or an enrolment: a new one at aal2, the old one ended.
  async function renew (claims: TokenClaims, roles: string[], caller: Caller): Promise<TokenPair> {
    const before = authContextOf(claims)
    const auth: AuthContext = { aal: 'aal2', amr: methods(...before.amr, 'otp', 'mfa'), auth_time: nowS() }
    const { pair, sessionId } = await sessions.start({ userId: claims.user_id, roles }, caller.client, auth)
    await sessions.revoke(claims.user_id, claims.sid, 'current')
    audit.record({ event: 'login', userId: claims.user_id, sessionId, detail: { method: 'step_up', replaced: claims.sid } }, caller)
    return pair
  }

  return {
    hasFactor,
    recoveryCodesLeft,
    prove,

    /**
     * A new TOTP factor for the signed-in user, unverified until its first code: its secret
     * (base32) and the otpauth URI an authenticator app reads from a QR code. A user who has a
     * verified factor adds another only from an aal2 session. An earlier unverified one is dropped.
     */
    async enroll (user: { id: number, username: string }, claims: TokenClaims, caller: Caller): Promise<{ factorId: string, secret: string, uri: string }> {
      if (authContextOf(claims).aal !== 'aal2' && await hasFactor(user.id)) throw new Aal2RequiredError()
      const factorId = randomUUID()
      const secret = generateSecret()
      await db.transaction().execute(async (trx) => {
        await trx.deleteFrom('mfa_factors').where('user_id', '=', user.id).where('verified_at', 'is', null).execute()
        await trx.insertInto('mfa_factors').values({ id: factorId, user_id: user.id, kind: 'totp', secret_sealed: box.seal(secret, factorId), created_at: clock.db() }).execute()
      })
      record('mfa_factor_added', user.id, caller, { factor_id: factorId })
      return { factorId, secret, uri: generateURI({ issuer: config.TOTP_ISSUER, label: user.username, secret }) }
    },

    /**
     * Verifies a new factor by a first code of it: the session becomes aal2 (a new one, with a new
     * pair), and the user's first verified factor brings ten recovery codes, shown once.
     */
    async verifyEnrollment (user: { id: number, roles: string[] }, claims: TokenClaims, factorId: string, code: string, caller: Caller): Promise<{ pair: TokenPair, recoveryCodes?: string[] }> {
      const factor = await db.selectFrom('mfa_factors').select(['id', 'secret_sealed'])
        .where('id', '=', factorId).where('user_id', '=', user.id).where('verified_at', 'is', null)
        .executeTakeFirst()
      if (factor === undefined) throw new NotFoundError()
      if (!/^[0-9]{6}$/.test(code) || await acceptTotp([factor], code) === undefined) {
        record('mfa_factor_verified', user.id, caller, { factor_id: factorId }, 'failure')
        throw new MfaCodeInvalidError()
      }
      const recoveryCodes = await db.transaction().execute(async (trx) => {
        const first = !await hasFactor(user.id, trx)
        await trx.updateTable('mfa_factors').set({ verified_at: clock.db() }).where('id', '=', factorId).execute()
        await notify(user.id, 'an authenticator app was added as a second factor', trx)
        return first ? await newRecoveryCodes(user.id, trx) : undefined
      })
      outbox.kick()
      record('mfa_factor_verified', user.id, caller, { factor_id: factorId, recovery_codes: recoveryCodes !== undefined })
      return { pair: await renew(claims, user.roles, caller), ...(recoveryCodes === undefined ? {} : { recoveryCodes }) }
    },

    async list (userId: number): Promise<FactorInfo[]> {
      const rows = await db.selectFrom('mfa_factors').select(['id', 'kind', 'created_at', 'verified_at'])
        .where('user_id', '=', userId).orderBy('created_at').orderBy('id').execute()
      return rows.map((row) => ({ id: row.id, kind: row.kind, created_at: row.created_at, verified: row.verified_at !== null }))
    },

    /**
     * Removes a factor of the signed-in user: a verified one only from an aal2 session whose
     * second factor was proven within the last 10 minutes. The last verified one takes the
     * recovery codes with it.
     */
    async remove (userId: number, claims: TokenClaims, factorId: string, caller: Caller): Promise<void> {
      const factor = await db.selectFrom('mfa_factors').select('verified_at').where('id', '=', factorId).where('user_id', '=', userId).executeTakeFirst()
      if (factor === undefined) throw new NotFoundError()
      if (factor.verified_at !== null) {
        const auth = authContextOf(claims)
        if (auth.aal !== 'aal2') throw new Aal2RequiredError()
        if (auth.auth_time < nowS() - RECENT_S) throw new RecentSignInRequiredError()
      }
      await db.transaction().execute(async (trx) => {
        await trx.deleteFrom('mfa_factors').where('id', '=', factorId).execute()
        if (!await hasFactor(userId, trx)) await trx.deleteFrom('recovery_codes').where('user_id', '=', userId).execute()
        if (factor.verified_at !== null) await notify(userId, 'a second factor was removed', trx)
      })
      outbox.kick()
      record('mfa_factor_removed', userId, caller, { factor_id: factorId })
    },

    /** Ten new recovery codes, the old ones dead: from an aal2 session of a user with a verified factor. */
    async regenerateRecoveryCodes (userId: number, claims: TokenClaims, caller: Caller): Promise<string[]> {
      if (authContextOf(claims).aal !== 'aal2' || !await hasFactor(userId)) throw new Aal2RequiredError()
      const codes = await db.transaction().execute(async (trx) => {
        await notify(userId, 'new recovery codes were made, and the old ones no longer work', trx)
        return await newRecoveryCodes(userId, trx)
      })
      outbox.kick()
      record('recovery_codes_regenerated', userId, caller)
      return codes
    },

    /** The second step a first factor leads to, for a user with a verified factor: an mfa_token. */
    async challenge (first: FirstFactor): Promise<MfaChallenge> {
      const { credential } = first
      const issued = await oneTimeCodes.issue({
        purpose: 'mfa_challenge',
        userId: credential.userId,
        ttlS: CHALLENGE_TTL_S,
        maxAttempts: CHALLENGE_TRIES,
        // Each device's sign-in has its own: one does not cancel another's.
        keepOthers: true,
        with: { token: true },
        detail: { amr: first.amr, cookies: first.cookies, ...(credential.passwordHash === undefined ? {} : { password: passwordDigest(credential.passwordHash) }) }
      })
      const left = await recoveryCodesLeft(credential.userId)
      return { mfaToken: issued.token!, methods: left > 0 ? ['totp', 'recovery_code'] : ['totp'] }
    },

    /**
     * The second step of a sign-in: the mfa_token and a code of the user's factor. A wrong code
     * counts against the token (5 kill it) and towards the lock; a right one spends the token
     * once and starts the session, aal2. Whether its answer sets cookies, as the first step's would.
     */
    async completeSignIn (mfaToken: string, method: SecondFactorMethod, code: string, caller: Caller): Promise<{ pair: TokenPair, cookies: boolean }> {
      const open = await oneTimeCodes.inspect('mfa_challenge', mfaToken)
      if (open === undefined) throw new MfaTokenInvalidError()
      const { userId } = open
      await prove(userId, method, code, caller, () => oneTimeCodes.fail('mfa_challenge', open.id))
      if (!await oneTimeCodes.spend('mfa_challenge', open.id)) throw new MfaTokenInvalidError()
      const detail = open.detail as { amr: string[], cookies: boolean, password?: string }
      const user = await db.selectFrom('users').select(['roles', 'password_hash']).where('id', '=', userId).where('is_active', '=', true).executeTakeFirst()
      // The password of the first step changed since (or the account was disabled): start again.
      if (user === undefined || (detail.password !== undefined && (user.password_hash === null || passwordDigest(user.password_hash) !== detail.password))) throw new InvalidCredentialsError()
      const credential: Credential = { userId, roles: user.roles, ...(detail.password === undefined ? {} : { passwordHash: user.password_hash! }) }
      const started = await sessions.start(credential, caller.client, { aal: 'aal2', amr: methods(...detail.amr, 'otp', 'mfa'), auth_time: nowS() })
      audit.record({ event: 'login', userId, sessionId: started.sessionId, detail: { method: detail.amr.join('+'), second: method } }, caller)
      return { pair: started.pair, cookies: detail.cookies }
    },

    /** A step-up of the current session by a code of the user's factor: a new aal2 session in its place. */
    async stepUp (user: { id: number, roles: string[] }, claims: TokenClaims, method: SecondFactorMethod, code: string, caller: Caller): Promise<TokenPair> {
      if (!await hasFactor(user.id)) throw new MfaCodeInvalidError()
      await prove(user.id, method, code, caller)
      return await renew(claims, user.roles, caller)
    },

    /** An operator's reset (the admin API): every factor and recovery code gone, the lock lifted, the user told. */
    async resetAll (userId: number): Promise<number> {
      const removed = await db.transaction().execute(async (trx) => {
        const deleted = await trx.deleteFrom('mfa_factors').where('user_id', '=', userId).executeTakeFirst()
        await trx.deleteFrom('recovery_codes').where('user_id', '=', userId).execute()
        await trx.updateTable('users').set({ mfa_failures: 0, mfa_locked_until: null }).where('id', '=', userId).execute()
        await notify(userId, 'an operator removed every second factor of the account', trx)
        return Number(deleted.numDeletedRows)
      })
      outbox.kick()
      return removed
    }
  }
}

export type SecondFactors = ReturnType<typeof createSecondFactors>
