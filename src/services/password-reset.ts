import { sql } from 'kysely'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { MfaRequiredError, ResetTokenInvalidError } from '../errors.ts'
import type { Clock } from '../lib/clock.ts'
import type { MailTemplates } from '../lib/mail-templates.ts'
import { hasSecondFactor, type Accounts } from './accounts.ts'
import type { AuditTrail, Caller } from './audit.ts'
import type { OneTimeCodes } from './one-time-codes.ts'
import type { Outbox } from './outbox.ts'
import type { SecondFactorMethod, SecondFactors } from './second-factors.ts'
import type { Executor, Sessions } from './sessions.ts'

/** What proves a reset: the token of the mail's link, or the address and the mail's code. */
export type ResetProof = { token: string } | { email: string, code: string }

/** The second factor a reset of an account that has one also takes (NIST 800-63B §6.1.2.3: two methods). */
export interface SecondProof { method: SecondFactorMethod, code: string }

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
  secondFactors: SecondFactors
}

/**
 * A forgotten password: a request queues a job and answers at once, whether the address has an
 * account or not (the worker finds that out, off the request path, and sends nothing for none);
 * the mail carries a link whose token is in the URL fragment, which mail scanners never send,
 * and a 6-digit code. A reset spends either once, ends every session of the user, counts the
 * address as verified, and mails the user a notice; it signs nobody in.
 */
export function createPasswordReset ({ db, clock, config, accounts, sessions, oneTimeCodes, outbox, templates, audit, secondFactors }: PasswordResetDeps) {
  const activeUser = (column: 'id' | 'email', value: number | string, executor: Executor = db) => executor.selectFrom('users')
    .select(['id', 'username', 'email']).select(hasSecondFactor)
    .where(column, '=', value).where('is_active', '=', true).where('deleted_at', 'is', null)
    .executeTakeFirst()

  // The payload names the user by the address asked for (forgot) or by id (an operator's mail).
  outbox.define('password_reset', async (payload, trx) => {
    const user = payload.userId === undefined ? await activeUser('email', String(payload.email), trx) : await activeUser('id', Number(payload.userId), trx)
    if (user === undefined) return undefined
    if (!await oneTimeCodes.mayMail(user.id, 'password_reset', trx)) return undefined
    const issued = await oneTimeCodes.issue({ purpose: 'password_reset', userId: user.id, ttlS: config.passwordResetTtlS, with: { token: true, code: true } }, trx)
    const link = `${config.APP_RESET_URL!}#token=${issued.token!}`
    const mail = templates.render('password-reset', user.email, { username: user.username, link, code: issued.code!, minutes: String(Math.round(config.passwordResetTtlS / 60)) })
    return { mail, expiresAt: issued.expiresAt }
  })

  outbox.define('password_changed', async (payload, trx) => {
    const user = await trx.selectFrom('users').select(['username', 'email']).where('id', '=', Number(payload.userId)).where('deleted_at', 'is', null).executeTakeFirst()
    if (user === undefined) return undefined
    return { mail: templates.render('password-changed', user.email, { username: user.username, at: String(payload.at) }) }
  })

  // The user a proof names, before anything is spent; undefined: no such open secret or account.
  async function userOf (proof: ResetProof): Promise<{ id: number, username: string, email: string, second_factor: boolean } | undefined> {
    if ('token' in proof) {
      const open = await oneTimeCodes.inspect('password_reset', proof.token)
      return open === undefined ? undefined : await activeUser('id', open.userId)
    }
    return await activeUser('email', proof.email)
  }

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

    /** Whether a link's token is still good, without spending it; and whether the reset will take a second factor. */
    async inspect (token: string): Promise<{ valid: boolean, expiresAt?: Date, mfaRequired?: boolean }> {
      const open = await oneTimeCodes.inspect('password_reset', token)
      const user = open === undefined ? undefined : await activeUser('id', open.userId)
      if (open === undefined || user === undefined) return { valid: false }
      return { valid: true, expiresAt: open.expiresAt, mfaRequired: user.second_factor }
    },

    /**
     * Sets the new password: the policy first (a refused password spends nothing), then the
     * proof is spent once (a wrong code counts against it, 5 kill it), then, in one transaction,
     * the hash set, the address counted as verified, every session ended, the notice queued.
     * An account with a second factor also takes a code of it, checked once the mail's proof is
     * found good and before it is spent: a mistyped second code spends nothing of the mail.
     */
    async reset (proof: ResetProof, newPassword: string, caller: Caller, second?: SecondProof): Promise<void> {
      const user = await userOf(proof)
      accounts.checkNewPassword(newPassword, user ?? ('email' in proof ? { email: proof.email } : {}))
      function failed (): never {
        audit.record({ event: 'password_reset', outcome: 'failure', userId: user?.id ?? null, ...('email' in proof ? { identifier: proof.email } : {}) }, caller)
        throw new ResetTokenInvalidError()
      }
      if (user?.second_factor === true) {
        if ('code' in proof && await oneTimeCodes.spendCode('password_reset', user.id, proof.code, { spend: false }) === undefined) failed()
        if (second === undefined) throw new MfaRequiredError()
        await secondFactors.prove(user.id, second.method, second.code, caller)
      }
      const spent = user === undefined
        ? undefined
        : 'token' in proof ? await oneTimeCodes.spendToken('password_reset', proof.token) : await oneTimeCodes.spendCode('password_reset', user.id, proof.code)
      if (user === undefined || spent === undefined || spent.userId !== user.id) failed()
      const hash = await accounts.hashPassword(newPassword)
      const ended = await sessions.changingUser(user.id, async (trx) => {
        const changed = await trx.updateTable('users')
          .set({ password_hash: hash, email_verified_at: sql<Date>`coalesce(email_verified_at, ${clock.db()})` })
          .where('id', '=', user.id).where('is_active', '=', true).where('deleted_at', 'is', null)
          .executeTakeFirst()
        if (changed.numUpdatedRows !== 1n) throw new ResetTokenInvalidError()
        const count = await sessions.endAll(user.id, trx)
        await outbox.enqueue('password_changed', { userId: user.id, at: clock.now().toISOString() }, trx)
        return count
      })
      outbox.kick()
      audit.record({ event: 'password_reset', userId: user.id, detail: { sessions_ended: ended, by: 'token' in proof ? 'link' : 'code' } }, caller)
    }
  }
}

export type PasswordReset = ReturnType<typeof createPasswordReset>
