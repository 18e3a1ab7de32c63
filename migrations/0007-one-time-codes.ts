import { sql, type Kysely } from 'kysely'

// Every single-use secret (an email verification, a password reset, a sign-in code, a second
// factor's challenge) in one table, used by one service (src/services/one-time-codes.ts): only
// hashes are kept, and each is spent by one guarded UPDATE.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('one_time_codes')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('purpose', 'text', (c) => c.notNull())
    .addColumn('user_id', 'integer', (c) => c.notNull().references('users.id').onDelete('cascade'))
    // SHA-256 of the link's 256-bit token, base64url; HMAC-SHA256 of the short code under a key
    // the database never holds. Either may be absent, as the purpose needs.
    .addColumn('token_hash', 'text')
    .addColumn('code_hash', 'text')
    .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('max_attempts', 'integer', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    .addColumn('expires_at', 'timestamptz', (c) => c.notNull())
    .addColumn('consumed_at', 'timestamptz')
    // What the secret is for beyond its user (the address a verification is for).
    .addColumn('detail', 'jsonb')
    .execute()
  await sql`create unique index one_time_codes_token_hash_key on one_time_codes (token_hash) where token_hash is not null`.execute(db)
  await sql`create index one_time_codes_open_idx on one_time_codes (user_id, purpose) where consumed_at is null`.execute(db)
  await db.schema.createIndex('one_time_codes_expires_at_idx').on('one_time_codes').column('expires_at').execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('one_time_codes').execute()
}
