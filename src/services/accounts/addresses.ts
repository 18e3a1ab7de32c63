import type { Transaction } from 'kysely'
import type { Database } from '../../db/types.ts'
import type { Clock } from '../../lib/clock.ts'
import type { MailTemplates } from '../mail/templates.ts'
import type { AuditTrail, Caller } from '../audit.ts'
import type { Outbox } from '../mail/outbox.ts'
import type { Mfa } from '../mfa/mfa.ts'
import type { Sessions } from '../sessions/sessions.ts'
import { deletePasskeysOf } from '../passkeys/credentials.ts'
import { deleteUnprovenIdentities } from '../upstream/identities.ts'
import { lockForProof, markVerified, recipientOf } from './users.ts'

/** What the first proof of an account's address took from it. */
export interface Removed { password: boolean, sessions: number, factors: number, identities: number, passkeys: number }

/** What a proof of an address found: whether it was the account's first, and what that removed. */
export interface Proven { first: boolean, removed: Removed }

export interface AddressesDeps {
  clock: Clock
  sessions: Sessions
  mfa: Mfa
  outbox: Outbox
  templates: MailTemplates
  audit: AuditTrail
}

const NOTHING: Removed = { password: false, sessions: 0, factors: 0, identities: 0, passkeys: 0 }

/** The removed things in words, for the notice mail. */
function described ({ password, sessions, factors, identities, passkeys }: Removed): string {
  return [
    ...(password ? ['the password'] : []),
    ...(sessions > 0 ? [`${sessions} signed-in session${sessions === 1 ? '' : 's'}`] : []),
    ...(factors > 0 ? [`${factors} second factor${factors === 1 ? '' : 's'} and the recovery codes`] : []),
    ...(identities > 0 ? [`${identities} linked sign-in${identities === 1 ? '' : 's'} of other providers`] : []),
    ...(passkeys > 0 ? [`${passkeys} passkey${passkeys === 1 ? '' : 's'}`] : [])
  ].join(', ')
}

/**
 * The proof that a user's address is theirs (a mailed link or code: a verification, a sign-in by
 * code, a password reset). The first proof on an account ends what may have been put there by
 * someone who registered the address without owning it (pre-account hijacking: Sudhodanan and
 * Paverd, "Pre-hijacked accounts", 2022): unless whoever proves the address shows they hold the
 * account too, its password is made unusable, its sessions end, its second factors and recovery
 * codes go, its passkeys too, and the address is mailed what went.
 */
export function createAddresses ({ clock, sessions, mfa, outbox, templates, audit }: AddressesDeps) {
  outbox.define('address_proven', async (payload, trx) => {
    const user = await recipientOf(trx, Number(payload.userId))
    if (user === undefined) return undefined
    return { mail: templates.render('address-proven', user.email, { username: user.username, removed: String(payload.removed), at: String(payload.at) }) }
  })

  return {
    /**
     * Marks `email` proven for the user, within `trx` (a transaction of sessions.changingUser),
     * while it is still their address: undefined when it is not (changed since the mail, or the
     * account deleted). On the account's first proof, unless `holder` (whoever proves it holds the
     * account: a live session of it, or its password), the password stops working, every session
     * ends and every second factor goes, but for what the caller does itself (`itself`: a reset
     * sets a password and ends every session); a notice of what went is queued.
     */
    async prove (trx: Transaction<Database>, userId: number, email: string, { holder = false, itself = {} }: { holder?: boolean, itself?: { password?: true, sessions?: true } } = {}): Promise<Proven | undefined> {
      const before = await lockForProof(trx, userId, email)
      if (before === undefined) return undefined
      if (before.email_verified_at !== null) return { first: false, removed: NOTHING }
      const password = !holder && itself.password !== true && before.password_hash !== null
      await markVerified(trx, userId, clock.db(), { dropPassword: password })
      if (holder) return { first: true, removed: NOTHING }
      const removed = {
        password,
        sessions: itself.sessions === true ? 0 : await sessions.endAll(userId, trx),
        factors: await mfa.removeAll(userId, trx),
        identities: await deleteUnprovenIdentities(trx, userId, email),
        passkeys: await deletePasskeysOf(trx, userId)
      }
      if (described(removed) !== '') await outbox.enqueue('address_proven', { userId, removed: described(removed), at: clock.now().toISOString() }, trx)
      return { first: true, removed }
    },

    /** Once the proof committed: the account's first in the audit trail, with how it came (`by`) and what it removed, and its notice sent. */
    committed (userId: number, proven: Proven | undefined, by: string, caller: Caller): void {
      if (proven?.first !== true) return
      audit.record({ event: 'address_proven', userId, detail: { by, removed: proven.removed } }, caller)
      outbox.kick()
    }
  }
}

export type Addresses = ReturnType<typeof createAddresses>
