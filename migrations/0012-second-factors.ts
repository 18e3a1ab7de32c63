import { type Kysely } from 'kysely'

// Second factors (src/services/mfa/mfa.ts): a user's TOTP factors, their secrets sealed
// (AES-GCM under a key derived from SECRET_KEY) and the last time step each accepted, so no code
// is taken twice; recovery codes, one hashed row each; and the run of failed second steps that
// locks them for a while.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('mfa_factors')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('user_id', 'integer', (c) => c.notNull().references('users.id').onDelete('cascade'))
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('secret_sealed', 'text', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    // Unverified until a first code proves the authenticator has the secret: never asked for before.
    .addColumn('verified_at', 'timestamptz')
    .addColumn('last_step', 'bigint')
    .execute()
  await db.schema.createIndex('mfa_factors_user_id_idx').on('mfa_factors').column('user_id').execute()
  await db.schema.createTable('recovery_codes')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('user_id', 'integer', (c) => c.notNull().references('users.id').onDelete('cascade'))
    // HMAC-SHA256 under a key the database never holds, base64url.
    .addColumn('code_hash', 'text', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    .addColumn('used_at', 'timestamptz')
    .addUniqueConstraint('recovery_codes_user_hash_key', ['user_id', 'code_hash'])
    .execute()
  await db.schema.alterTable('users').addColumn('mfa_failures', 'integer', (c) => c.notNull().defaultTo(0)).execute()
  await db.schema.alterTable('users').addColumn('mfa_locked_until', 'timestamptz').execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('users').dropColumn('mfa_locked_until').execute()
  await db.schema.alterTable('users').dropColumn('mfa_failures').execute()
  await db.schema.dropTable('recovery_codes').execute()
  await db.schema.dropTable('mfa_factors').execute()
}
