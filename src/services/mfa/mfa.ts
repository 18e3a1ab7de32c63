import { createHash } from 'node:crypto'
import { sql, type Transaction } from 'kysely'
import type { Config } from '../../config.ts'
import type { Db } from '../../db/index.ts'
import type { Database } from '../../db/types.ts'
import {
  Aal2RequiredError, InvalidCredentialsError, MfaCodeInvalidError, MfaCodeUsedError, MfaLockedError, MfaTokenInvalidError, NotFoundError
} from '../../errors.ts'
import { epochSeconds, seconds, type Clock } from '../../lib/clock.ts'
import type { MailTemplates } from '../mail/templates.ts'
import type { TokenPair } from '../../schemas.ts'
import {
  activeUsers, clearSecondSteps, countSecondStep, hasAal2Way, methodsOfUser, needsSecondStep, recipientOf, secondStepMethods, uncountSecondStep, type MfaMethod, type SecondStepMethod
} from '../accounts/users.ts'
import type { AuditEventName, AuditTrail, Caller } from '../audit.ts'
import { authContextOf, requireRecent as requireRecentAt, type AuthContext, type TokenClaims } from '../auth/claims.ts'
import type { OneTimeCodes } from '../one-time-codes.ts'
import type { Outbox } from '../mail/outbox.ts'
import type { Credential, Executor, Sessions } from '../sessions/sessions.ts'
import { createRecoveryCodes } from './recovery-codes.ts'
import { createTotp, type FactorInfo, type Judged } from './totp.ts'

export type { FactorInfo, MfaMethod, SecondStepMethod }

/** What a first factor that needs a second answers: no pair, a token for the second step. */
export interface MfaChallenge { mfaToken: string, methods: SecondStepMethod[] }

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

// An mfa_token: 5 minutes, 5 tries.
const CHALLENGE_TTL_S = 300
const CHALLENGE_TRIES = 5
// Failed second steps in a row (whatever the token, the session) that lock them, and for how long.
const LOCK_AFTER = 10
const LOCK_S = 15 * 60

// The methods of a sign-in, each once, in order (RFC 8176 §2). A TOTP is RFC 8176's `otp`; a
// recovery code has no registered value and is named apart, so that a gateway can tell them.
const methods = (...amr: string[]): string[] => [...new Set(amr)]
const secondAmr = (method: MfaMethod): string[] => [method === 'totp' ? 'otp' : 'recovery_code', 'mfa']

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
  const totp = createTotp({ db, clock, config })
  const recoveryCodes = createRecoveryCodes({ db, clock, config })
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

  async function hasFactor (userId: number, executor: Executor = db): Promise<boolean> {
    return needsSecondStep(await methodsOfUser(executor, userId))
  }

  // Adding or removing a factor, and new recovery codes, take a recent proof (claims.ts).
  const requireRecent = (claims: TokenClaims, options: { aal2: boolean }): void => requireRecentAt(claims, nowS(), options)

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
        const taken = method === 'totp' ? await totp.takeVerified(userId, code, trx) : await recoveryCodes.take(userId, code, trx)
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
      const left = await recoveryCodes.left(userId)
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
    const deleted = await totp.removeAll(userId, executor)
    await recoveryCodes.removeAll(userId, executor)
    await clearSecondSteps(executor, userId)
    return deleted
  }

  // An open mfa_token, its try counted (5 tries): its id, its user and what its first step left.
  async function openChallenge (mfaToken: string): Promise<{ id: string, userId: number, detail: Record<string, unknown> | null }> {
    const open = await oneTimeCodes.inspect('mfa_challenge', mfaToken)
    if (open === undefined || !await oneTimeCodes.attempt('mfa_challenge', open.id)) throw new MfaTokenInvalidError()
    return open
  }

  async function spendChallenge (id: string, trx: Transaction<Database>): Promise<void> {
    if (!await oneTimeCodes.spend('mfa_challenge', id, trx)) throw new MfaTokenInvalidError()
  }

  // A second step proven: the session, aal2, with the first step's amr and the second's.
  async function finishSignIn (open: { userId: number, detail: Record<string, unknown> | null }, amr: string[], second: SecondStepMethod, caller: Caller): Promise<{ pair: TokenPair, cookies: boolean }> {
    const { userId } = open
    const detail = open.detail as { amr: string[], cookies: boolean, password?: string }
    const user = await activeUsers(db).select(['roles', 'password_hash']).where('id', '=', userId).executeTakeFirst()
    // The password of the first step changed since (or the account was disabled): start again.
    if (user === undefined || (detail.password !== undefined && (user.password_hash === null || passwordDigest(user.password_hash) !== detail.password))) throw new InvalidCredentialsError()
    const credential: Credential = { userId, roles: user.roles, ...(detail.password === undefined ? {} : { passwordHash: user.password_hash! }) }
    const started = await sessions.start(credential, caller.device, { aal: 'aal2', amr: methods(...detail.amr, ...amr), auth_time: nowS() })
    audit.record({ event: 'login', userId, sessionId: started.sessionId, detail: { method: detail.amr.join('+'), second } }, caller)
    return { pair: started.pair, cookies: detail.cookies }
  }

  // The session of a step-up or an enrolment: a new one at aal2, the old one ended.
  async function renew (claims: TokenClaims, roles: string[], method: MfaMethod, caller: Caller): Promise<TokenPair> {
    const before = authContextOf(claims)
    const auth: AuthContext = { aal: 'aal2', amr: methods(...before.amr, ...secondAmr(method)), auth_time: nowS() }
    const { pair, sessionId } = await sessions.start({ userId: claims.user_id, roles }, caller.device, auth)
    await sessions.revoke(claims.user_id, claims.sid, 'current')
    audit.record({ event: 'login', userId: claims.user_id, sessionId, detail: { method: 'step_up', replaced: claims.sid } }, caller)
    return pair
  }

  return {
    hasFactor,
    recoveryCodesLeft: recoveryCodes.left,
    prove,

    /**
     * A new TOTP factor for the signed-in user, unverified until its first code: its secret
     * (base32) and the otpauth URI an authenticator app reads from a QR code. It takes a recent
     * sign-in, and from a user who can sign in at aal2 (a verified factor, a passkey) an aal2
     * session. An earlier unverified one is dropped.
     */
    async enroll (user: { id: number, username: string }, claims: TokenClaims, caller: Caller): Promise<{ factorId: string, secret: string, uri: string }> {
      requireRecent(claims, { aal2: hasAal2Way(await methodsOfUser(db, user.id)) })
      const added = await totp.add(user)
      record('mfa_factor_added', user.id, caller, { factor_id: added.factorId })
      return added
    },

    /**
     * Verifies a new factor by a first code of it: the session becomes aal2 (a new one, with a new
     * pair), and the user's first verified factor brings ten recovery codes, shown once.
     */
    async verifyEnrollment (user: { id: number, roles: string[] }, claims: TokenClaims, factorId: string, code: string, caller: Caller): Promise<{ pair: TokenPair, recoveryCodes?: string[] }> {
      const judged = await totp.takeUnverified(user.id, factorId, code)
      if (judged === undefined) throw new NotFoundError()
      if (judged !== 'right') {
        record('mfa_factor_verified', user.id, caller, { factor_id: factorId }, 'failure')
        throw new MfaCodeInvalidError()
      }
      const codes = await db.transaction().execute(async (trx) => {
        const first = !await hasFactor(user.id, trx)
        await totp.markVerified(factorId, trx)
        await notify(user.id, 'an authenticator app was added as a second factor', trx)
        return first ? await recoveryCodes.replace(user.id, trx) : undefined
      })
      outbox.kick()
      record('mfa_factor_verified', user.id, caller, { factor_id: factorId, recovery_codes: codes !== undefined })
      return { pair: await renew(claims, user.roles, 'totp', caller), ...(codes === undefined ? {} : { recoveryCodes: codes }) }
    },

    list: totp.list,

    /**
     * Removes a factor of the signed-in user: a verified one only from an aal2 session signed in
     * (or stepped up) within the last 10 minutes. The last verified one takes the recovery codes with it.
     */
    async remove (userId: number, claims: TokenClaims, factorId: string, caller: Caller): Promise<void> {
      const factor = await totp.find(userId, factorId)
      if (factor === undefined) throw new NotFoundError()
      if (factor.verified) requireRecent(claims, { aal2: true })
      await db.transaction().execute(async (trx) => {
        await totp.remove(factorId, trx)
        if (!await hasFactor(userId, trx)) await recoveryCodes.removeAll(userId, trx)
        if (factor.verified) await notify(userId, 'a second factor was removed', trx)
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
        return await recoveryCodes.replace(userId, trx)
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
      const open = await openChallenge(mfaToken)
      try {
        await prove(open.userId, method, code, caller, async (trx) => { await spendChallenge(open.id, trx) })
      } catch (error) {
        // A code used already is not a guess: the token's try is given back too.
        if (error instanceof MfaCodeUsedError) await oneTimeCodes.takeBack('mfa_challenge', open.id)
        throw error
      }
      return await finishSignIn(open, secondAmr(method), method, caller)
    },

    /**
     * The second step of a sign-in by a passkey (src/services/passkeys/): the token's try counted,
     * then, in one transaction, the token spent and `proof` run (it checks the passkey is the
     * user's and takes its signature counter), so that of parallel steps on one token one signs
     * in; `proof` answers the passkey's amr values. A passkey is not a guessed code: a refused one
     * counts towards the token's tries, not the lock of the second step.
     */
    async completeByPasskey (mfaToken: string, proof: (userId: number, trx: Transaction<Database>) => Promise<string[]>, caller: Caller): Promise<{ pair: TokenPair, cookies: boolean }> {
      const open = await openChallenge(mfaToken)
      const amr = await db.transaction().execute(async (trx) => {
        await spendChallenge(open.id, trx)
        return await proof(open.userId, trx)
      })
      await clearSecondSteps(db, open.userId)
      record('mfa_verify', open.userId, caller, { method: 'passkey' })
      return await finishSignIn(open, amr, 'passkey', caller)
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
