import { sql } from 'kysely'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { VerificationTokenInvalidError } from '../errors.ts'
import type { Clock } from '../lib/clock.ts'
import type { MailTemplates } from '../lib/mail-templates.ts'
import type { AuditTrail, Caller } from './audit.ts'
import type { OneTimeCodes } from './one-time-codes.ts'
import type { Outbox } from './outbox.ts'
import type { Sessions } from './sessions.ts'

/** What proves an address: the token of the mail's link, or the address and the mail's code. */
export type VerificationProof = { token: string } | { email: string, code: string }

export interface EmailVerificationDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'EMAIL_VERIFICATION' | 'APP_VERIFY_URL' | 'emailVerificationTtlS'>
  sessions: Sessions
  oneTimeCodes: OneTimeCodes
  outbox: Outbox
  templates: MailTemplates
  audit: AuditTrail
}

/**
 * Verifying a user's address (EMAIL_VERIFICATION): a mail at registration and on request, with
 * a link whose token is in the fragment and a code, for the address the user had when it was
 * sent (a secret of an address changed since verifies nothing). Requests answer the same for
 * every address; the worker sends nothing to an unknown or already verified one.
 */
export function createEmailVerification ({ db, clock, config, sessions, oneTimeCodes, outbox, templates, audit }: EmailVerificationDeps) {
  outbox.define('email_verification', async (payload, trx) => {
    const user = await trx.selectFrom('users').select(['id', 'username', 'email'])
      .$if(payload.userId !== undefined, (q) => q.where('id', '=', Number(payload.userId)))
      .$if(payload.userId === undefined, (q) => q.where('email', '=', String(payload.email)))
      .where('is_active', '=', true).where('deleted_at', 'is', null).where('email_verified_at', 'is', null)
      .executeTakeFirst()
    if (user === undefined || !await oneTimeCodes.mayMail(user.id, 'email_verification', trx)) return undefined
    const issued = await oneTimeCodes.issue({ purpose: 'email_verification', userId: user.id, ttlS: config.emailVerificationTtlS, with: { token: true, code: true }, detail: { email: user.email } }, trx)
    const link = `${config.APP_VERIFY_URL!}#token=${issued.token!}`
    const mail = templates.render('email-verification', user.email, { username: user.username, link, code: issued.code!, hours: String(Math.round(config.emailVerificationTtlS / 3600)) })
    return { mail, expiresAt: issued.expiresAt }
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

    /** Spends the proof once and marks the address it was sent to verified (while it is still the user's). */
    async verify (proof: VerificationProof, caller: Caller): Promise<void> {
      let spent
      if ('token' in proof) {
        spent = await oneTimeCodes.spendToken('email_verification', proof.token)
      } else {
        const user = await db.selectFrom('users').select('id').where('email', '=', proof.email).executeTakeFirst()
        spent = user === undefined ? undefined : await oneTimeCodes.spendCode('email_verification', user.id, proof.code)
      }
      const address = spent?.detail?.email
      const verified = spent === undefined || typeof address !== 'string'
        ? 0n
        : await sessions.changingUser(spent.userId, async (trx) => (await trx.updateTable('users')
          .set({ email_verified_at: sql<Date>`coalesce(email_verified_at, ${clock.db()})` })
          .where('id', '=', spent.userId).where('email', '=', address).where('deleted_at', 'is', null)
          .executeTakeFirst()).numUpdatedRows)
      if (verified !== 1n) {
        audit.record({ event: 'email_verified', outcome: 'failure', userId: spent?.userId ?? null, ...('email' in proof ? { identifier: proof.email } : {}) }, caller)
        throw new VerificationTokenInvalidError()
      }
      audit.record({ event: 'email_verified', userId: spent!.userId, detail: { by: 'token' in proof ? 'link' : 'code' } }, caller)
    }
  }
}

export type EmailVerification = ReturnType<typeof createEmailVerification>
