import type { Config } from '../config.ts'
import { InvalidCredentialsError, VerificationTokenInvalidError } from '../errors.ts'
import type { MailedProof } from '../schemas.ts'
import type { Accounts } from './accounts/accounts.ts'
import type { Addresses } from './accounts/addresses.ts'
import type { AuditTrail, Caller } from './audit.ts'
import type { OneTimeCodes } from './one-time-codes.ts'
import type { Outbox } from './mail/outbox.ts'
import type { Sessions } from './sessions/sessions.ts'

/** What may show that whoever verifies also holds the account: the user of the request's live session, or the password they gave. */
export interface Holder { userId?: number, password?: string }

export interface EmailVerificationDeps {
  config: Pick<Config, 'EMAIL_VERIFICATION' | 'APP_VERIFY_URL' | 'emailVerificationTtlS'>
  sessions: Sessions
  oneTimeCodes: OneTimeCodes
  outbox: Outbox
  audit: AuditTrail
  accounts: Accounts
  addresses: Addresses
}

/**
 * Verifying a user's address (EMAIL_VERIFICATION): a mail at registration and on request, with
 * a link whose token is in the fragment and a code, for the address the user had when it was
 * sent (a secret of an address changed since verifies nothing). Requests answer the same for
 * every address; the worker sends nothing to an unknown or already verified one.
 */
export function createEmailVerification ({ config, sessions, oneTimeCodes, outbox, audit, accounts, addresses }: EmailVerificationDeps) {
  outbox.define('email_verification', async (payload, trx) => {
    return await oneTimeCodes.mail({
      purpose: 'email_verification',
      to: payload.userId === undefined ? { email: String(payload.email) } : { userId: Number(payload.userId) },
      // Nothing to an address verified already; the secret names the address it was sent to,
      // which it verifies only while it is still the user's (addresses.prove).
      unverified: true,
      detail: (user) => ({ email: user.email }),
      ttlS: config.emailVerificationTtlS,
      with: { token: true, code: true },
      link: config.APP_VERIFY_URL!,
      template: 'email-verification',
      values: { hours: String(Math.round(config.emailVerificationTtlS / 3600)) }
    }, trx)
  })

  return {
    /** After a registration: its verification mail, unless EMAIL_VERIFICATION=off. */
    async registered (userId: number): Promise<void> {
      if (config.EMAIL_VERIFICATION === 'off') return
      await outbox.enqueue('email_verification', { userId })
      outbox.kick()
    },

    /** A new verification mail for `email`'s account, if it has one not yet verified; always the same quick answer. */
    async resend (email: string, caller: Caller): Promise<void> {
      await outbox.enqueue('email_verification', { email })
      audit.record({ event: 'email_verification_requested', identifier: email }, caller)
    },

    /**
     * Spends the proof once and marks the address it was sent to proven (while it is still the
     * user's). Whoever verifies holds the mailbox; when they also show they hold the account (a
     * live session of it, or its password: `holder`), nothing else changes. Without that, the
     * account's first proof removes what may have been put there by someone who registered the
     * address without owning it (addresses.prove): its password, sessions and second factors.
     * A wrong password spends nothing. Whether the password was removed.
     */
    async verify (proof: MailedProof, caller: Caller, holder: Holder = {}): Promise<{ passwordRemoved: boolean }> {
      const found = 'token' in proof ? await oneTimeCodes.inspect('email_verification', proof.token) : await oneTimeCodes.tryCode('email_verification', proof.email, proof.code)
      const address = found?.detail?.email
      const failed = (): never => {
        audit.record({ event: 'email_verified', outcome: 'failure', userId: found?.userId ?? null, ...('email' in proof ? { identifier: proof.email } : {}) }, caller)
        throw new VerificationTokenInvalidError()
      }
      if (found === undefined || typeof address !== 'string') return failed()
      const { userId } = found
      let holds = holder.userId === userId
      if (!holds && holder.password !== undefined) {
        if (!await accounts.passwordIs(userId, holder.password)) {
          audit.record({ event: 'email_verified', outcome: 'failure', userId, detail: { reason: 'wrong password' } }, caller)
          throw new InvalidCredentialsError()
        }
        holds = true
      }
      const proven = await sessions.changingUser(userId, async (trx) =>
        await oneTimeCodes.spend('email_verification', found.id, trx) ? await addresses.prove(trx, userId, address, { holder: holds }) : undefined)
      if (proven === undefined) return failed()
      addresses.committed(userId, proven, 'email_verification', caller)
      audit.record({ event: 'email_verified', userId, detail: { by: 'token' in proof ? 'link' : 'code', holder: holds } }, caller)
      return { passwordRemoved: proven.removed.password }
    }
  }
}

export type EmailVerification = ReturnType<typeof createEmailVerification>
