import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { EmailNotVerifiedError, InvalidCredentialsError, SignInCodeInvalidError } from '../errors.ts'
import { epochSeconds, type Clock } from '../lib/clock.ts'
import type { TokenPair, User } from '../schemas.ts'
import { proofOf, type Accounts, type PasswordProof } from './accounts/accounts.ts'
import { activeWithMethods, needsSecondStep, type ActiveUser } from './accounts/users.ts'
import type { Addresses } from './accounts/addresses.ts'
import type { AuditTrail, Caller } from './audit.ts'
import type { OneTimeCodes } from './one-time-codes.ts'
import type { Outbox } from './mail/outbox.ts'
import type { MfaChallenge, Mfa } from './mfa/mfa.ts'
import type { Sessions } from './sessions/sessions.ts'

/**
 * Where a sign-in stands after a step: a session with its first pair, or a second factor to
 * prove (POST /api/auth/mfa/verify with the mfa_token) before there is one.
 */
export type SignInStep = { kind: 'session', user: User, sessionId: string, pair: TokenPair } | { kind: 'mfa', challenge: MfaChallenge }

/**
 * The first factor a sign-in passed: its method, its RFC 8176 amr values, the assurance it gives
 * alone (aal1 unless said), whether it is two factors itself (a passkey that verified its user:
 * no second step follows), what the audit trail adds.
 */
interface FirstFactor { method: 'password' | 'email_code' | 'upstream' | 'passkey', amr: string[], aal?: 'aal1' | 'aal2', whole?: true, detail?: Record<string, unknown> }

/** How a first step is answered: with cookies (login, the email code) or in the body alone (simplejwt's /api/token). */
export interface StepOptions { cookies: boolean }

export interface SignInDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'EMAIL_VERIFICATION' | 'emailSignInTtlS'>
  accounts: Accounts
  sessions: Sessions
  oneTimeCodes: OneTimeCodes
  outbox: Outbox
  audit: AuditTrail
  mfa: Mfa
  addresses: Addresses
}

/**
 * Signing in, as a sequence of steps: a first factor proves who the user is, then whatever the
 * account still needs comes next, and only then does a session start. Every outcome is in the
 * audit trail, as `login`.
 */
export function createSignIn ({ db, clock, config, accounts, sessions, oneTimeCodes, outbox, audit, mfa, addresses }: SignInDeps) {
  outbox.define('email_sign_in', async (payload, trx) => {
    return await oneTimeCodes.mail({
      purpose: 'email_sign_in',
      to: { email: String(payload.email) },
      ttlS: config.emailSignInTtlS,
      with: { code: true },
      template: 'email-sign-in',
      values: { minutes: String(Math.round(config.emailSignInTtlS / 60)) }
    }, trx)
  })

  // A first factor passed: what comes next. With EMAIL_VERIFICATION=required, an address not
  // yet verified stops here (said only to whoever proved the first factor); a user with a second
  // factor gets an mfa_token and no pair, unless the factor was two itself (a passkey); else the
  // session, aal1 (aal2 for a passkey, and for an upstream sign-in the provider, trusted for it,
  // says took several factors).
  async function next ({ user, credential, emailVerified, methods }: PasswordProof, caller: Caller, factor: FirstFactor, { cookies }: StepOptions): Promise<SignInStep> {
    const detail = factor.method === 'password' ? undefined : { method: factor.method, ...factor.detail }
    if (config.EMAIL_VERIFICATION === 'required' && !emailVerified) {
      audit.record({ event: 'login', outcome: 'failure', userId: user.id, detail: { method: factor.method, ...factor.detail, reason: 'email_not_verified' } }, caller)
      throw new EmailNotVerifiedError()
    }
    const { amr } = factor
    if (factor.whole !== true && needsSecondStep(methods)) return { kind: 'mfa', challenge: await mfa.challenge({ credential, amr, cookies }) }
    let started
    try {
      started = await sessions.start(credential, caller.device, { aal: factor.aal ?? 'aal1', amr, auth_time: epochSeconds(clock.now()) })
    } catch (error) {
      // The credential changed while it was checked (a password change, the account disabled).
      if (error instanceof InvalidCredentialsError) audit.record({ event: 'login', outcome: 'failure', userId: user.id, ...(detail === undefined ? {} : { detail }) }, caller)
      throw error
    }
    audit.record({ event: 'login', userId: user.id, sessionId: started.sessionId, ...(detail === undefined ? {} : { detail }) }, caller)
    return { kind: 'session', user, ...started }
  }

  return {
    /** A sign-in with a username (or an email: it holds an @) and a password. */
    async password (identifier: string, password: string, caller: Caller, options: StepOptions): Promise<SignInStep> {
      let proof
      try {
        proof = await accounts.authenticate(identifier, password)
      } catch (error) {
        if (error instanceof InvalidCredentialsError) audit.record({ event: 'login', outcome: 'failure', identifier }, caller)
        throw error
      }
      // RFC 8176: a password is pwd.
      return await next(proof, caller, { method: 'password', amr: ['pwd'] }, options)
    },

    /** Queues a sign-in code for `email`'s account, if it has one; always the same quick answer. */
    async requestCode (email: string, caller: Caller): Promise<void> {
      await outbox.enqueue('email_sign_in', { email })
      audit.record({ event: 'email_sign_in_requested', identifier: email }, caller)
    },

    /**
     * A sign-in with the code mailed to `email`: tried (a wrong one counts, 5 kill it; an address
     * of no account takes the same work), then spent once; it proves the address, which counts
     * as verified from then on. The first proof of the account's address signs out everyone and
     * removes the password and second factors someone may have put there before (addresses.prove):
     * the session it starts is then the account's only one.
     */
    async emailCode (email: string, code: string, caller: Caller): Promise<SignInStep> {
      const found = await oneTimeCodes.tryCode('email_sign_in', email, code)
      const user = found === undefined ? undefined : await activeWithMethods(db, found.userId)
      const proven = user === undefined
        ? undefined
        : await sessions.changingUser(user.id, async (trx) => await oneTimeCodes.spend('email_sign_in', found!.id, trx) ? await addresses.prove(trx, user.id, user.email) : undefined)
      if (user === undefined || proven === undefined) {
        audit.record({ event: 'login', outcome: 'failure', userId: user?.id ?? found?.userId ?? null, identifier: email, detail: { method: 'email_code' } }, caller)
        throw new SignInCodeInvalidError()
      }
      addresses.committed(user.id, proven, 'email_code', caller)
      // A first proof of the address removed the second factors (addresses.prove): none is asked.
      const methods = proven.first ? { ...user.methods, totp: false, recoveryCodes: false, passkeys: 0 } : user.methods
      const proof = { ...proofOf(user), emailVerified: true, methods }
      // RFC 8176: a code mailed once is otp.
      return await next(proof, caller, { method: 'email_code', amr: ['otp'] }, { cookies: true })
    },

    /**
     * A sign-in by a passkey its user verified (src/services/passkeys/), `user` as the statement
     * that took its counter read them and recorded the sign-in (undefined: not active): aal2 by
     * itself, no second step; `amr` as the passkey gives it (hwk or swk, user, mfa).
     */
    async passkey (userId: number, user: ActiveUser | undefined, { amr, passkey }: { amr: string[], passkey: string }, caller: Caller): Promise<SignInStep> {
      if (user === undefined) {
        audit.record({ event: 'login', outcome: 'failure', userId, detail: { method: 'passkey', passkey, reason: 'inactive' } }, caller)
        throw new InvalidCredentialsError()
      }
      return await next(proofOf(user), caller, { method: 'passkey', amr, aal: 'aal2', whole: true, detail: { passkey } }, { cookies: true })
    },

    /**
     * A sign-in of an upstream identity provider's user, the account found or made for it
     * (src/services/upstream/): one factor, `fed` in amr (the provider's own `mfa` beside it,
     * and aal2, when the provider is trusted for it); a local second factor still applies.
     */
    async upstream (proof: PasswordProof, caller: Caller, { provider, multiFactor }: { provider: string, multiFactor: boolean }, options: StepOptions): Promise<SignInStep> {
      return await next(proof, caller, { method: 'upstream', amr: multiFactor ? ['fed', 'mfa'] : ['fed'], aal: multiFactor ? 'aal2' : 'aal1', detail: { provider } }, options)
    }
  }
}

export type SignIn = ReturnType<typeof createSignIn>
