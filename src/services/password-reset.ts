import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { MfaRequiredError, ResetTokenInvalidError } from '../errors.ts'
import type { Clock } from '../lib/clock.ts'
import type { MailTemplates } from './mail/templates.ts'
import type { MailedProof } from '../schemas.ts'
import type { Accounts } from './accounts/accounts.ts'
import type { Addresses } from './accounts/addresses.ts'
import { activeWithMethods, needsSecondStep, recipientOf, setPasswordHash, type SignInMethods } from './accounts/users.ts'
import type { AuditTrail, Caller } from './audit.ts'
import type { OneTimeCodes } from './one-time-codes.ts'
import type { Outbox } from './mail/outbox.ts'
import type { MfaMethod, Mfa } from './mfa/mfa.ts'
import type { Executor, Sessions } from './sessions/sessions.ts'

/** The second factor a reset of an account that has one also takes (NIST 800-63B §6.1.2.3: two methods). */
export interface SecondProof { method: MfaMethod, code: string }

export interface PasswordResetDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'APP_RESET_URL' | 'passwordResetTtlS'>
  accounts: Accounts
  sessions: Sessions
  oneTimeCodes: OneTimeCodes
  outbox: Outbox
  templates: MailTemplates
  audit: AuditTrail
  mfa: Mfa
  addresses: Addresses
}

/**
 * A forgotten password: a request queues a job and answers at once, whether the address has an
 * account or not (the worker finds that out, off the request path, and sends nothing for none);
 * the mail carries a link whose token is in the URL fragment, which mail scanners never send,
 * and a 6-digit code. A reset spends either once, ends every session of the user, counts the
 * address as verified, and mails the user a notice; it signs nobody in.
 */
export function createPasswordReset ({ db, clock, config, accounts, sessions, oneTimeCodes, outbox, templates, audit, mfa, addresses }: PasswordResetDeps) {
  // A reset of an account with a second factor takes a code of it too, once the address was
  // ever proven: before that, the factors are not the address owner's to be asked for.
  const secondFactorAsked = (user: { methods: SignInMethods, email_verified_at: Date | null }): boolean => needsSecondStep(user.methods) && user.email_verified_at !== null

  // The payload names the user by the address asked for (forgot) or by id (an operator's mail).
  outbox.define('password_reset', async (payload, trx) => {
    return await oneTimeCodes.mail({
      purpose: 'password_reset',
      to: payload.userId === undefined ? { email: String(payload.email) } : { userId: Number(payload.userId) },
      ttlS: config.passwordResetTtlS,
      with: { token: true, code: true },
      link: config.APP_RESET_URL!,
      template: 'password-reset',
      values: { minutes: String(Math.round(config.passwordResetTtlS / 60)) }
    }, trx)
  })

  outbox.define('password_changed', async (payload, trx) => {
    const user = await recipientOf(trx, Number(payload.userId))
    if (user === undefined) return undefined
    return { mail: templates.render('password-changed', user.email, { username: user.username, at: String(payload.at) }) }
  })

  return {
    /** Queues the reset mail of `email`'s account, if it has one; always the same quick answer. */
    async forgot (email: string, caller: Caller): Promise<void> {
      await outbox.enqueue('password_reset', { email })
      audit.record({ event: 'password_reset_requested', identifier: email }, caller)
    },

    /**
     * Queues the reset mail of the user `userId` for an operator (the admin API), sent at once;
     * false when the per-account limit holds it back. Nobody but the user sees its link or code.
     */
    async mailTo (userId: number): Promise<boolean> {
      if (!await oneTimeCodes.mayMail(userId, 'password_reset')) return false
      await outbox.enqueue('password_reset', { userId })
      outbox.kick()
      return true
    },

    /**
     * Whether a link's token is still good, without spending it; and whether the reset will take
     * a second factor (not for an address never proven: see reset).
     */
    async inspect (token: string): Promise<{ valid: boolean, expiresAt?: Date, mfaRequired?: boolean }> {
      const open = await oneTimeCodes.inspect('password_reset', token)
      const user = open === undefined ? undefined : await activeWithMethods(db, open.userId)
      if (open === undefined || user === undefined) return { valid: false }
      return { valid: true, expiresAt: open.expiresAt, mfaRequired: secondFactorAsked(user) }
    },

    /**
     * Sets the new password. The proof is looked at first (a code tried: a wrong one counts, the
     * fifth kills it; an address of no account takes the same work), so that nobody without it
     * learns anything of the account, not even whether the new password would fit it; then the
     * policy (a refused password spends nothing); then, for an account with a second factor, a
     * code of it, judged in the transaction that spends the mail's proof first (a mistyped
     * second code spends nothing of the mail, and of two parallel resets one spends a code).
     * Then, in one transaction, the hash set, the address proven, every session ended, the
     * notice queued. An address proven for the first time is not asked for its factors: they go
     * (addresses.prove), as whoever added them never proved the address.
     */
    async reset (proof: MailedProof, newPassword: string, caller: Caller, second?: SecondProof): Promise<void> {
      const found = 'token' in proof ? await oneTimeCodes.inspect('password_reset', proof.token) : await oneTimeCodes.tryCode('password_reset', proof.email, proof.code)
      const user = found === undefined ? undefined : await activeWithMethods(db, found.userId)
      const failed = (): never => {
        audit.record({ event: 'password_reset', outcome: 'failure', userId: user?.id ?? null, ...('email' in proof ? { identifier: proof.email } : {}) }, caller)
        throw new ResetTokenInvalidError()
      }
      if (found === undefined || user === undefined) return failed()
      accounts.checkNewPassword(newPassword, user)
      const asked = secondFactorAsked(user)
      if (asked && second === undefined) throw new MfaRequiredError()
      const spend = async (trx: Executor): Promise<void> => {
        if (!await oneTimeCodes.spend('password_reset', found.id, trx)) failed()
      }
      if (asked) await mfa.prove(user.id, second!.method, second!.code, caller, spend)
      const hash = await accounts.hashPassword(newPassword)
      const { ended, proven } = await sessions.changingUser(user.id, async (trx) => {
        if (!asked) await spend(trx)
        const proven = await addresses.prove(trx, user.id, user.email, { itself: { password: true, sessions: true } })
        if (proven === undefined) throw new ResetTokenInvalidError()
        // Proven meanwhile by someone holding the account, whose factors stay: they are asked for.
        if (!asked && !proven.first && await mfa.hasFactor(user.id, trx)) throw new MfaRequiredError()
        if (!await setPasswordHash(trx, user.id, hash, 'active')) throw new ResetTokenInvalidError()
        const ended = await sessions.endAll(user.id, trx)
        await outbox.enqueue('password_changed', { userId: user.id, at: clock.now().toISOString() }, trx)
        return { ended, proven }
      })
      outbox.kick()
      addresses.committed(user.id, proven, 'password_reset', caller)
      audit.record({ event: 'password_reset', userId: user.id, detail: { sessions_ended: ended, by: 'token' in proof ? 'link' : 'code' } }, caller)
    }
  }
}

export type PasswordReset = ReturnType<typeof createPasswordReset>
