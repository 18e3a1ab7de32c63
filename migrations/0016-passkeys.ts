import { type Kysely } from 'kysely'

// Passkeys (WebAuthn, src/services/passkeys/): a user's credentials, each its public key (COSE,
// base64url), the signature counter it last showed (one that goes back is a copied
// authenticator's), and what the browser said of it; and the one user handle every passkey of a
// user carries (random, never the id or the address), made with the first and never changed.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('passkeys')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('user_id', 'integer', (c) => c.notNull().references('users.id').onDelete('cascade'))
    // The credential id the authenticator made, base64url: unique across users.
    .addColumn('credential_id', 'text', (c) => c.notNull().unique())
    .addColumn('public_key', 'text', (c) => c.notNull())
    // An unsigned 32-bit number.
    .addColumn('counter', 'bigint', (c) => c.notNull())
    .addColumn('transports', 'jsonb', (c) => c.notNull())
    // singleDevice, or multiDevice (a synced passkey), and whether it is backed up now.
    .addColumn('device_type', 'text', (c) => c.notNull())
    .addColumn('backed_up', 'boolean', (c) => c.notNull())
    .addColumn('aaguid', 'text', (c) => c.notNull())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    .addColumn('last_used_at', 'timestamptz')
    .execute()
  await db.schema.createIndex('passkeys_user_id_idx').on('passkeys').column('user_id').execute()
  await db.schema.alterTable('users').addColumn('webauthn_user_handle', 'text', (c) => c.unique()).execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('users').dropColumn('webauthn_user_handle').execute()
  await db.schema.dropTable('passkeys').execute()
}
