import { randomUUID } from 'node:crypto'
import type { QueryCreator, RawBuilder } from 'kysely'
import type { Executor } from '../../db/index.ts'
import type { Database } from '../../db/types.ts'
import { activeUsers } from '../accounts/users.ts'

// The one owner of `passkeys`: a user's WebAuthn credentials, each its public key and the
// signature counter it last showed.

/** A passkey as its user and operators see it. */
const PASSKEY_COLUMNS = ['id', 'name', 'device_type', 'backed_up', 'aaguid', 'transports', 'created_at', 'last_used_at'] as const

/** What a registration verified, to keep. */
export interface NewPasskey {
  credentialId: string
  publicKey: string
  counter: number
  transports: string[]
  deviceType: 'singleDevice' | 'multiDevice'
  backedUp: boolean
  aaguid: string
  name: string
}

/** The user's passkeys, oldest first. */
export async function passkeysOf (executor: Executor, userId: number) {
  return await executor.selectFrom('passkeys').select(PASSKEY_COLUMNS).where('user_id', '=', userId).orderBy('created_at').orderBy('id').execute()
}

/** The credential ids of the user's passkeys and their transports: what a new registration excludes, and a second step allows. */
export async function credentialIdsOf (executor: Executor, userId: number): Promise<Array<{ id: string, transports: string[] }>> {
  const rows = await executor.selectFrom('passkeys').select(['credential_id', 'transports']).where('user_id', '=', userId).orderBy('created_at').execute()
  return rows.map((row) => ({ id: row.credential_id, transports: row.transports }))
}

/** The passkey of a credential id, with its user's handle: what an assertion is verified against. */
export async function passkeyOfCredential (executor: Executor, credentialId: string) {
  return await executor.selectFrom('passkeys')
    .innerJoin('users', 'users.id', 'passkeys.user_id')
    .select(['passkeys.id', 'passkeys.user_id', 'passkeys.public_key', 'passkeys.counter', 'passkeys.transports', 'passkeys.name', 'users.webauthn_user_handle'])
    .where('passkeys.credential_id', '=', credentialId)
    .executeTakeFirst()
}

/** Keeps a new passkey of the user: its id, or undefined when its credential is registered already (to anyone). */
export async function insertPasskey (executor: Executor, userId: number, passkey: NewPasskey, at: RawBuilder<Date>): Promise<string | undefined> {
  const id = randomUUID()
  const inserted = await executor.insertInto('passkeys').values({
    id,
    user_id: userId,
    credential_id: passkey.credentialId,
    public_key: passkey.publicKey,
    counter: passkey.counter,
    transports: JSON.stringify(passkey.transports),
    device_type: passkey.deviceType,
    backed_up: passkey.backedUp,
    aaguid: passkey.aaguid,
    name: passkey.name,
    created_at: at
  }).onConflict((oc) => oc.column('credential_id').doNothing()).executeTakeFirst()
  return inserted.numInsertedOrUpdatedRows === 1n ? id : undefined
}

/**
 * A use of the passkey, in one guarded statement: its counter moved to `counter` only while
 * that is ahead of the stored one (both nought: an authenticator that keeps no counter, as
 * synced passkeys do), its backup state and last use recorded; with `ofActiveUser`, only while
 * its user is active. Returns the passkey's user_id, so that it can be the WITH of a statement
 * that records the sign-in (recordLoginOfSigner). Nothing when the counter did not move ahead
 * (a copied authenticator, or a parallel use of the same count) or the passkey is gone.
 */
export const takePasskey = (q: QueryCreator<Database>, id: string, use: { counter: number, backedUp: boolean }, at: RawBuilder<Date>, { ofActiveUser = false } = {}) =>
  q.updateTable('passkeys')
    .set({ counter: use.counter, backed_up: use.backedUp, last_used_at: at })
    .where('id', '=', id)
    .where('counter', use.counter === 0 ? '=' : '<', String(use.counter))
    .$if(ofActiveUser, (w) => w.where('user_id', 'in', activeUsers().select('id')))
    .returning('user_id')

/** takePasskey within `executor`: whether the counter moved ahead. */
export async function usePasskey (executor: Executor, id: string, use: { counter: number, backedUp: boolean }, at: RawBuilder<Date>): Promise<boolean> {
  return await takePasskey(executor, id, use, at).executeTakeFirst() !== undefined
}

/** Renames the user's passkey; false when the user has no such passkey. */
export async function renamePasskey (executor: Executor, userId: number, id: string, name: string): Promise<boolean> {
  const updated = await executor.updateTable('passkeys').set({ name }).where('id', '=', id).where('user_id', '=', userId).executeTakeFirst()
  return updated.numUpdatedRows === 1n
}

/** Removes the user's passkey `id`: its name, or undefined when the user has no such passkey. */
export async function deletePasskey (executor: Executor, userId: number, id: string): Promise<string | undefined> {
  return (await executor.deleteFrom('passkeys').where('id', '=', id).where('user_id', '=', userId).returning('name').executeTakeFirst())?.name
}

/** Removes every passkey of the user (a first proof of the address, an account deleted): how many. */
export async function deletePasskeysOf (executor: Executor, userId: number): Promise<number> {
  const deleted = await executor.deleteFrom('passkeys').where('user_id', '=', userId).executeTakeFirst()
  return Number(deleted.numDeletedRows)
}
