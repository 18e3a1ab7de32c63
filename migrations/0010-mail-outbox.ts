import { sql, type Kysely } from 'kysely'

// Mail sent off the request path: a request queues a job, a worker on every replica claims due
// jobs (FOR UPDATE SKIP LOCKED: one replica each), prepares the mail (the one-time secret it
// carries is made then) and sends it, retrying with backoff while SMTP is down; a sent job is
// deleted. The payload, and once prepared the mail with its secrets, is sealed (AES-GCM under
// a key derived from SECRET_KEY): the table never holds a link or a code in clear. A user's
// verified address (the reset of a password proves it).
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('users').addColumn('email_verified_at', 'timestamptz').execute()
  await db.schema.createTable('mail_outbox')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('sealed', 'text', (c) => c.notNull())
    .addColumn('prepared', 'boolean', (c) => c.notNull().defaultTo(false))
    .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    .addColumn('due_at', 'timestamptz', (c) => c.notNull())
    // A prepared mail whose secret has expired is of no use: dropped, not sent.
    .addColumn('expires_at', 'timestamptz')
    .addColumn('last_error', 'text')
    .execute()
  await db.schema.createIndex('mail_outbox_due_at_idx').on('mail_outbox').column('due_at').execute()
  await sql`comment on table mail_outbox is 'authgate mail waiting for SMTP; sealed, deleted once sent'`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('mail_outbox').execute()
  await db.schema.alterTable('users').dropColumn('email_verified_at').execute()
}
