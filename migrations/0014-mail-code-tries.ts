import { sql, type Kysely } from 'kysely'

// The tries of a mailed code, counted per address typed (src/services/one-time-codes.ts,
// tryCode): one row for an address of an account and for an address of none alike, so that a
// try is the same statements and the same write whoever owns the address. A new mail of the
// purpose starts the count again; rows older than any code's lifetime are pruned.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('mail_code_tries')
    .addColumn('purpose', 'text', (c) => c.notNull())
    .addColumn('email', sql`citext`, (c) => c.notNull())
    .addColumn('tries', 'integer', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    .addPrimaryKeyConstraint('mail_code_tries_pkey', ['purpose', 'email'])
    .execute()
  await db.schema.createIndex('mail_code_tries_created_at_idx').on('mail_code_tries').column('created_at').execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('mail_code_tries').execute()
}
