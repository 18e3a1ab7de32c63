import { sql, type Kysely } from 'kysely'

// Identities of upstream providers (OpenID Connect, GitHub) linked to users: an identity is
// the pair (issuer, subject), unique, never an address (src/services/upstream/). A sign-in
// flow with an upstream provider is a single-use secret of no user yet (the browser's flow
// cookie): one_time_codes.user_id becomes optional for it.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('user_identities')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('user_id', 'integer', (c) => c.notNull().references('users.id').onDelete('cascade'))
    // The configured provider's name (google, corp), as the user's list shows it.
    .addColumn('provider', 'text', (c) => c.notNull())
    .addColumn('issuer', 'text', (c) => c.notNull())
    .addColumn('subject', 'text', (c) => c.notNull())
    // The address its last sign-in named, and whether the provider, trusted for addresses,
    // asserted it verified: shown, never matched on.
    .addColumn('email', sql`citext`)
    .addColumn('email_verified', 'boolean', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    .addColumn('last_used_at', 'timestamptz')
    .addUniqueConstraint('user_identities_issuer_subject_key', ['issuer', 'subject'])
    .execute()
  await db.schema.createIndex('user_identities_user_id_idx').on('user_identities').column('user_id').execute()
  await db.schema.alterTable('one_time_codes').alterColumn('user_id', (c) => c.dropNotNull()).execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.deleteFrom('one_time_codes').where('user_id', 'is', null).execute()
  await db.schema.alterTable('one_time_codes').alterColumn('user_id', (c) => c.setNotNull()).execute()
  await db.schema.dropTable('user_identities').execute()
}
