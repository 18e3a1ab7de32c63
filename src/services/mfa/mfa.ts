import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto'
import { sql, type Transaction } from 'kysely'
import { generateSecret, generateURI, verifySync } from 'otplib'
import type { Config } from '../../config.ts'
import type { Db } from '../../db/index.ts'
import type { Database } from '../../db/types.ts'
import {
  Aal2RequiredError, InvalidCredentialsError, MfaCodeInvalidError, MfaCodeUsedError, MfaLockedError, MfaTokenInvalidError, NotFoundError, RecentSignInRequiredError
} from '../../errors.ts'
import { epochSeconds, seconds, type Clock } from '../../lib/clock.ts'
import type { MailTemplates } from '../mail/templates.ts'
import { SecretBox } from '../../lib/secret-box.ts'
import { subkey } from '../../lib/subkeys.ts'
import type { TokenPair } from '../../schemas.ts'
import {
  activeUsers, clearSecondSteps, countSecondStep, methodsOfUser, needsSecondStep, recipientOf, secondStepMethods, uncountSecondStep, type MfaMethod
} from '../accounts/users.ts'
import type { AuditEventName, AuditTrail, Caller } from '../audit.ts'
import { authContextOf, type AuthContext, type TokenClaims } from '../auth/claims.ts'
import type { OneTimeCodes } from '../one-time-codes.ts'
import type { Outbox } from '../mail/outbox.ts'
import type { Credential, Executor, Sessions } from '../sessions/sessions.ts'

export type { MfaMethod }

/** A second factor as its user sees it. */
export interface FactorInfo { id: string, kind: 'totp', created_at: Date, verified: boolean }

/** What a first factor that needs a second answers: no pair, a token for the second step. */
export interface MfaChallenge { mfaToken: string, methods: MfaMethod[] }

/** A first factor passed: its user and credential, its methods (RFC 8176), and whether its answer sets cookies. */
export interface FirstFactor { credential: Credential, amr: string[], cookies: boolean }

export interface MfaDeps {
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
// A change of factors takes a sign-in (or a step-up) within this long.
const RECENT_S = 10 * 60

// A recovery code: 80 random bits as 20 hex digits in groups of five; typed back in any case,
// with or without the dashes and spaces.
const newRecoveryCode = (): string => randomBytes(10).toString('hex').match(/.{5}/g)!.join('-')
const normalizeRecoveryCode = (code: string): string => code.toLowerCase().replace(/[\s-]/g, '')

// The methods of a sign-in, each once, in order (RFC 8176 §2). A TOTP is RFC 8176's `otp`; a
// recovery code has no registered value and is named apart, so that a gateway can tell them.
const methods = (...amr: string[]): string[] => [...new Set(amr)]
const secondAmr = (method: MfaMethod): string[] => [method === 'totp' ? 'otp' : 'recovery_code', 'mfa']

/** What a code was, once judged: the one taken, a wrong one, or a right one used already (not a guess). */
type Judged = 'right' | 'wrong' | 'used'
// Thrown out of the transaction that judged a code that is not right, so that nothing of it stays.
class Judgement extends Error {
  readonly judged: Exclude<Judged, 'right'>
  constructor (judged: Exclude<Judged, 'right'>) {
    super(judged)
    this.judged = judged
  }
}

/**
 * Second factors: TOTP (RFC 6238) with the last accepted time step stored, so a code is taken
 * once (two parallel verifies of one code: one success); recovery codes, one HMAC'd row each.
 * A user with a verified factor signs in in two steps: the first factor gets an mfa_token (a
 * one-time secret, 5 tries, 5 minutes), the second gets the pair, aal2. Ten failed second steps
 * in a row lock them for 15 minutes. A session that becomes aal2 (step-up, enrolment) is a new
 * session, the old one ended: a session id is renewed when its privilege changes (OWASP).
 */
export function createMfa ({ db, clock, config, sessions, oneTimeCodes, outbox, templates, audit }: MfaDeps) {
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
    const user = await recipientOf(trx, Number(payload.userId))
    if (user === undefined) return undefined
    return { mail: templates.render('second-factor-changed', user.email, { username: user.username, change: String(payload.change), at: String(payload.at) }) }
  })
  // The notice of a change, queued with it; sent once it committed (outbox.kick).
  const notify = (userId: number, change: string, executor: Executor = db): Promise<void> =>
    outbox.enqueue('second_factor_changed', { userId, change, at: clock.now().toISOString() }, executor)

  const verifiedFactors = (userId: number, executor: Executor = db) => executor.selectFrom('mfa_factors').select(['id', 'secret_sealed'])
    .where('user_id', '=', userId).where('verified_at', 'is not', null)

  async function hasFactor (userId: number, executor: Executor = db): Promise<boolean> {
    return needsSecondStep(await methodsOfUser(executor, userId))
  }

  // Adding or removing a factor, and new recovery codes, take a recent proof: a sign-in (or a
  // step-up) within RECENT_S, and an aal2 session when `aal2`. A stolen token of an older sign-in,
  // a refreshed one included (a refresh keeps auth_time), cannot add an authenticator of the
  // thief's and lock its owner out.
  function requireRecent (claims: TokenClaims, { aal2 }: { aal2: boolean }): void {
    if (aal2 && authContextOf(claims).aal !== 'aal2') throw new Aal2RequiredError()
    if ((claims.auth_time ?? 0) < nowS() - RECENT_S) throw new RecentSignInRequiredError()
  }

  // Takes a TOTP code of one of `factors` once: the time step it matched is stored by a guarded
  // UPDATE, which a second use of the code (or of an older one) finds already past: `used`.
  async function takeTotp (factors: Array<{ id: string, secret_sealed: string }>, code: string, executor: Executor = db): Promise<Judged> {
    if (!/^[0-9]{6}$/.test(code)) return 'wrong'
    const now = nowS()
    let used = false
    for (const factor of factors) {
      const result = verifySync({ secret: box.open(factor.secret_sealed, factor.id), token: code, epoch: now, epochTolerance: STEP_S })
      if (!result.valid) continue
      const step = Math.floor(now / STEP_S) + result.delta
      const taken = await executor.updateTable('mfa_factors').set({ last_step: step })
        .where('id', '=', factor.id)
        .where((eb) => eb.or([eb('last_step', 'is', null), eb('last_step', '<', String(step))]))
        .executeTakeFirst()
      if (taken.numUpdatedRows === 1n) return 'right'
      used = true
    }
    return used ? 'used' : 'wrong'
  }

  // Spends one of the user's recovery codes: `used` when it is one of theirs spent already.
  async function takeRecoveryCode (userId: number, code: string, executor: Executor): Promise<Judged> {
    const hash = recoveryHash(userId, code)
    const spent = await executor.updateTable('recovery_codes').set({ used_at: clock.db() })
      .where('user_id', '=', userId).where('code_hash', '=', hash).where('used_at', 'is', null)
      .executeTakeFirst()
    if (spent.numUpdatedRows === 1n) return 'right'
    const known = await executor.selectFrom('recovery_codes').select('id').where('user_id', '=', userId).where('code_hash', '=', hash).executeTakeFirst()
    return known === undefined ? 'wrong' : 'used'
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
   * Counts a second step of the user before its code is judged, in one guarded statement: none
   * while the second step is locked (undefined); the try that makes LOCK_AFTER in a row sets the
   * lock. Of parallel tries, no more than the lock allows are ever judged. A lock that has run
   * out starts the count again.
   */
  const countTry = (userId: number): Promise<number | undefined> =>
    countSecondStep(db, userId, clock.db(), LOCK_AFTER, sql<Date>`${clock.db()} + ${seconds(LOCK_S)}`)

  // Takes back a try that was not a guess (its code was used already, or it was never judged):
  // with the lock it set, if it was the one that set it; never a lock another try set.
  const takeBackTry = (userId: number, tries: number): Promise<void> => uncountSecondStep(db, userId, tries, LOCK_AFTER)

  /**
   * A second step of the user: counted first (refused while locked), then judged in one
   * transaction that runs `first` before it (what the step spends besides the code: an mfa_token,
   * a reset mail's secret), so that of parallel steps sharing what `first` spends one takes a
   * code, and a code is never spent for a step that then fails. A right code clears the count; a
   * wrong one stays counted (the tenth in a row locks); a code used already is answered as such
   * and not counted. A recovery code used is mailed about.
   */
  async function prove (userId: number, method: MfaMethod, code: string, caller: Caller, first?: (trx: Transaction<Database>) => Promise<void>): Promise<void> {
    const tries = await countTry(userId)
    if (tries === undefined) {
      record('mfa_verify', userId, caller, { method, reason: 'locked' }, 'failure')
      throw new MfaLockedError()
    }
    let judged: Judged
    try {
      judged = await db.transaction().execute(async (trx) => {
        await first?.(trx)
        const taken = method === 'totp' ? await takeTotp(await verifiedFactors(userId, trx).execute(), code, trx) : await takeRecoveryCode(userId, code, trx)
        // Not right: nothing `first` spent stays spent.
        if (taken !== 'right') throw new Judgement(taken)
        return taken
      })
    } catch (error) {
      if (!(error instanceof Judgement)) {
        await takeBackTry(userId, tries)
        throw error
      }
      judged = error.judged
    }
    if (judged === 'used') {
      await takeBackTry(userId, tries)
      record('mfa_verify', userId, caller, { method, reason: 'used' }, 'failure')
      throw new MfaCodeUsedError()
    }
    if (judged === 'wrong') {
      const locked = tries >= LOCK_AFTER
      record('mfa_verify', userId, caller, { method, ...(locked ? { locked_for_s: LOCK_S } : {}) }, 'failure')
      throw locked ? new MfaLockedError() : new MfaCodeInvalidError()
    }
    await clearSecondSteps(db, userId)
    record('mfa_verify', userId, caller, { method })
    if (method === 'recovery_code') {
      const left = await recoveryCodesLeft(userId)
      record('recovery_code_used', userId, caller, { left })
      await notify(userId, `a recovery code was used (${left} left)`)
      outbox.kick()
    }
  }

  /**
   * Every factor and recovery code of the user gone and the lock lifted, within `executor`
   * (an operator's reset, an address proven for the first time); how many factors went.
   */
  async function removeAll (userId: number, executor: Executor): Promise<number> {
    const deleted = await executor.deleteFrom('mfa_factors').where('user_id', '=', userId).executeTakeFirst()
    await executor.deleteFrom('recovery_codes').where('user_id', '=', userId).execute()
    await clearSecondSteps(executor, userId)
    return Number(deleted.numDeletedRows)
  }

  // The session of a step-up or an enrolment: a new one at aal2, the old one ended.
  async function renew (claims: TokenClaims, roles: string[], method: MfaMethod, caller: Caller): Promise<TokenPair> {
    const before = authContextOf(claims)
    const auth: AuthContext = { aal: 'aal2', amr: methods(...before.amr, ...secondAmr(method)), auth_time: nowS() }
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
     * (base32) and the otpauth URI an authenticator app reads from a QR code. It takes a recent
     * sign-in, and from a user who has a verified factor an aal2 session. An earlier unverified one is dropped.
     */
    async enroll (user: { id: number, username: string }, claims: TokenClaims, caller: Caller): Promise<{ factorId: string, secret: string, uri: string }> {
      requireRecent(claims, { aal2: await hasFactor(user.id) })
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
      if (await takeTotp([factor], code) !== 'right') {
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
      return { pair: await renew(claims, user.roles, 'totp', caller), ...(recoveryCodes === undefined ? {} : { recoveryCodes }) }
    },

    async list (userId: number): Promise<FactorInfo[]> {
      const rows = await db.selectFrom('mfa_factors').select(['id', 'kind', 'created_at', 'verified_at'])
        .where('user_id', '=', userId).orderBy('created_at').orderBy('id').execute()
      return rows.map((row) => ({ id: row.id, kind: row.kind, created_at: row.created_at, verified: row.verified_at !== null }))
    },

    /**
     * Removes a factor of the signed-in user: a verified one only from an aal2 session signed in
     * (or stepped up) within the last 10 minutes. The last verified one takes the recovery codes with it.
     */
    async remove (userId: number, claims: TokenClaims, factorId: string, caller: Caller): Promise<void> {
      const factor = await db.selectFrom('mfa_factors').select('verified_at').where('id', '=', factorId).where('user_id', '=', userId).executeTakeFirst()
      if (factor === undefined) throw new NotFoundError()
      if (factor.verified_at !== null) requireRecent(claims, { aal2: true })
      await db.transaction().execute(async (trx) => {
        await trx.deleteFrom('mfa_factors').where('id', '=', factorId).execute()
        if (!await hasFactor(userId, trx)) await trx.deleteFrom('recovery_codes').where('user_id', '=', userId).execute()
        if (factor.verified_at !== null) await notify(userId, 'a second factor was removed', trx)
      })
      outbox.kick()
      record('mfa_factor_removed', userId, caller, { factor_id: factorId })
    },

    /** Ten new recovery codes, the old ones dead: from a recent aal2 session of a user with a verified factor. */
    async regenerateRecoveryCodes (userId: number, claims: TokenClaims, caller: Caller): Promise<string[]> {
      if (!await hasFactor(userId)) throw new Aal2RequiredError()
      requireRecent(claims, { aal2: true })
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
      return { mfaToken: issued.token!, methods: secondStepMethods(await methodsOfUser(db, credential.userId)) }
    },

    /** The user of an open mfa_token, if it is one (the per-account rate limit of the second step counts by it). */
    async challengedUser (mfaToken: string): Promise<number | undefined> {
      return (await oneTimeCodes.inspect('mfa_challenge', mfaToken))?.userId
    },

    /**
     * The second step of a sign-in: the mfa_token and a code of the user's factor. The token's
     * try is counted before the code is judged (5 tries), and the token is spent in the
     * transaction that takes the code, before it: of parallel steps on one token, one signs in
     * and no other code (a recovery code) is spent. A right code starts the session, aal2; the
     * answer sets cookies where the first step's would.
     */
    async completeSignIn (mfaToken: string, method: MfaMethod, code: string, caller: Caller): Promise<{ pair: TokenPair, cookies: boolean }> {
      const open = await oneTimeCodes.inspect('mfa_challenge', mfaToken)
      if (open === undefined || !await oneTimeCodes.attempt('mfa_challenge', open.id)) throw new MfaTokenInvalidError()
      const { userId } = open
      try {
        await prove(userId, method, code, caller, async (trx) => {
          if (!await oneTimeCodes.spend('mfa_challenge', open.id, trx)) throw new MfaTokenInvalidError()
        })
      } catch (error) {
        // A code used already is not a guess: the token's try is given back too.
        if (error instanceof MfaCodeUsedError) await oneTimeCodes.takeBack('mfa_challenge', open.id)
        throw error
      }
      const detail = open.detail as { amr: string[], cookies: boolean, password?: string }
      const user = await activeUsers(db).select(['roles', 'password_hash']).where('id', '=', userId).executeTakeFirst()
      // The password of the first step changed since (or the account was disabled): start again.
      if (user === undefined || (detail.password !== undefined && (user.password_hash === null || passwordDigest(user.password_hash) !== detail.password))) throw new InvalidCredentialsError()
      const credential: Credential = { userId, roles: user.roles, ...(detail.password === undefined ? {} : { passwordHash: user.password_hash! }) }
      const started = await sessions.start(credential, caller.client, { aal: 'aal2', amr: methods(...detail.amr, ...secondAmr(method)), auth_time: nowS() })
      audit.record({ event: 'login', userId, sessionId: started.sessionId, detail: { method: detail.amr.join('+'), second: method } }, caller)
      return { pair: started.pair, cookies: detail.cookies }
    },

    /** A step-up of the current session by a code of the user's factor: a new aal2 session in its place. */
    async stepUp (user: { id: number, roles: string[] }, claims: TokenClaims, method: MfaMethod, code: string, caller: Caller): Promise<TokenPair> {
      if (!await hasFactor(user.id)) throw new MfaCodeInvalidError()
      await prove(user.id, method, code, caller)
      return await renew(claims, user.roles, method, caller)
    },

    removeAll,

    /**
     * An operator's reset (the admin API): every factor and recovery code gone, the lock lifted,
     * the user told; and their sessions ended, unless `keepSessions` (a lost phone of someone
     * whose sessions are theirs). How many factors and sessions went.
     */
    async resetAll (userId: number, { keepSessions = false } = {}): Promise<{ factors: number, sessions: number }> {
      const removed = await sessions.changingUser(userId, async (trx) => {
        const factors = await removeAll(userId, trx)
        const ended = keepSessions ? 0 : await sessions.endAll(userId, trx)
        await notify(userId, `an operator removed every second factor of the account${keepSessions ? '' : ' and ended its sessions'}`, trx)
        return { factors, sessions: ended }
      })
      outbox.kick()
      return removed
    }
  }
}

export type Mfa = ReturnType<typeof createMfa>
