import { sql, type Kysely } from 'kysely'

// Every replica caches the users of active sessions (src/services/sessions/cache.ts). Whatever
// ends a session or changes a user (authgate, or an operator's SQL) notifies them all, on
// commit: `s:<session id>` or `u:<user id>` on the channel authgate_sessions.
export async function up (db: Kysely<any>): Promise<void> {
  await createNotifyFunction(db)
  await sql`create trigger sessions_notify after update of revoked_at, expires_at, user_id or delete on sessions
    for each row execute function authgate_notify_sessions()`.execute(db)
  await sql`create trigger users_notify after update of is_active, username, email or delete on users
    for each row execute function authgate_notify_sessions()`.execute(db)
}

/** The trigger function as this migration made it (0006 replaces it, and puts it back on the way down). */
export async function createNotifyFunction (db: Kysely<any>): Promise<void> {
  await sql`
    create or replace function authgate_notify_sessions() returns trigger language plpgsql as $$
    begin
      perform pg_notify('authgate_sessions', case when tg_table_name = 'sessions' then 's:' else 'u:' end || old.id::text);
      return null;
    end $$`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop trigger users_notify on users`.execute(db)
  await sql`drop trigger sessions_notify on sessions`.execute(db)
  await sql`drop function authgate_notify_sessions()`.execute(db)
}
