import { randomUUID } from 'node:crypto'
import type { QueryCreator, RawBuilder } from 'kysely'
import type { Executor } from '../../db/index.ts'
import type { Database } from '../../db/types.ts'
import { activeUsers } from '../accounts/users.ts'
import type { UpstreamProfile } from './provider-client.ts'

// The one owner of `user_identities`: an upstream identity is the pair (issuer, subject),
// unique, linked to one user.

/** A linked identity as its user and operators see it. */
const IDENTITY_COLUMNS = ['id', 'provider', 'subject', 'email', 'created_at', 'last_used_at'] as const

/** The user of an identity, the row locked until the transaction ends (a sign-in and an unlink of it at once: one waits). */
export async function userOfIdentity (executor: Executor, issuer: string, subject: string): Promise<{ id: string, user_id: number } | undefined> {
  return await executor.selectFrom('user_identities').select(['id', 'user_id'])
    .where('issuer', '=', issuer).where('subject', '=', subject)
    .forUpdate()
    .executeTakeFirst()
}

/** The identity's last use, and the address it now names (shown, never matched on). */
const used = (profile: UpstreamProfile, at: RawBuilder<Date>) => ({ last_used_at: at, email: profile.email ?? null, email_verified: profile.emailVerified })

/** Records the use of identity `id` (used). */
export async function touchIdentity (executor: Executor, id: string, profile: UpstreamProfile, at: RawBuilder<Date>): Promise<void> {
  await executor.updateTable('user_identities').set(used(profile, at)).where('id', '=', id).execute()
}

/**
 * The identity's use recorded (used) when it is known and its user active: a statement for the
 * WITH of another (recordLoginOfSigner), which takes its user_id, so that a returning sign-in is
 * one round trip. Nothing when the identity is new or its user is not active.
 */
export const touchKnownIdentity = (q: QueryCreator<Database>, profile: UpstreamProfile, at: RawBuilder<Date>) =>
  q.updateTable('user_identities')
    .set(used(profile, at))
    .where('issuer', '=', profile.issuer).where('subject', '=', profile.subject)
    .where('user_id', 'in', activeUsers().select('id'))
    .returning('user_id')

/** Links the identity to the user; false when it is linked already (to anyone: the pair is unique). */
export async function insertIdentity (executor: Executor, userId: number, profile: UpstreamProfile, at: RawBuilder<Date>): Promise<boolean> {
  const inserted = await executor.insertInto('user_identities').values({
    id: randomUUID(),
    user_id: userId,
    provider: profile.provider,
    issuer: profile.issuer,
    subject: profile.subject,
    email: profile.email ?? null,
    email_verified: profile.emailVerified,
    created_at: at,
    last_used_at: at
  }).onConflict((oc) => oc.columns(['issuer', 'subject']).doNothing()).executeTakeFirst()
  return inserted.numInsertedOrUpdatedRows === 1n
}

/** The user's linked identities, oldest first. */
export async function identitiesOf (executor: Executor, userId: number) {
  return await executor.selectFrom('user_identities').select(IDENTITY_COLUMNS).where('user_id', '=', userId).orderBy('created_at').orderBy('id').execute()
}

/** Unlinks the user's identity `id`: its provider's name, or undefined when the user has no such identity. */
export async function deleteIdentity (executor: Executor, userId: number, id: string): Promise<string | undefined> {
  const row = await executor.deleteFrom('user_identities').where('id', '=', id).where('user_id', '=', userId).returning('provider').executeTakeFirst()
  return row?.provider
}

/**
 * At the first proof of the user's address, the identities that did not prove it themselves go:
 * someone who never owned the address may have linked them before its owner came (pre-account
 * hijacking). Those whose provider, trusted for addresses, asserted this very address stay.
 */
export async function deleteUnprovenIdentities (executor: Executor, userId: number, email: string): Promise<number> {
  const deleted = await executor.deleteFrom('user_identities')
    .where('user_id', '=', userId)
    .where((eb) => eb.or([eb('email_verified', '=', false), eb('email', 'is', null), eb('email', '!=', email)]))
    .executeTakeFirst()
  return Number(deleted.numDeletedRows)
}
