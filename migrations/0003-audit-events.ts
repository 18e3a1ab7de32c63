import { sql, type Kysely } from 'kysely'

// The audit trail: one row per security event, kept for AUDIT_RETENTION. No foreign keys: an
// event outlives the user or session it names, and its insert never waits on their locks.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('audit_events')
    .addColumn('id', 'bigint', (c) => c.primaryKey().generatedAlwaysAsIdentity())
    .addColumn('at', 'timestamptz', (c) => c.notNull())
    .addColumn('event', 'text', (c) => c.notNull())
    .addColumn('outcome', 'text', (c) => c.notNull())
    .addColumn('user_id', 'integer')
    .addColumn('session_id', 'uuid')
    // The username or email given, when no user is known (a failed login).
    .addColumn('identifier', 'text')
    .addColumn('ip', 'text')
    .addColumn('user_agent', 'text')
    .addColumn('detail', 'jsonb')
    .execute()
  await db.schema.createIndex('audit_events_at_idx').on('audit_events').column('at').execute()
  await db.schema.createIndex('audit_events_user_id_at_idx').on('audit_events').columns(['user_id', 'at']).execute()
  await sql`comment on table audit_events is 'authgate security events; pruned after AUDIT_RETENTION'`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('audit_events').execute()
}
