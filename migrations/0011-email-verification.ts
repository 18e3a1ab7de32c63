import { sql, type Kysely } from 'kysely'

// Whether a user's address is verified is cached with the session user on each replica (forward
// auth reports it, EMAIL_VERIFICATION=required gates on it): the users trigger notifies a
// change of it like one of the name, address or roles.
const notifyOn = (columns: string) => sql.raw(`create trigger users_notify after update of ${columns} or delete on users
  for each row execute function authgate_notify_sessions()`)

export async function up (db: Kysely<any>): Promise<void> {
  await sql`drop trigger users_notify on users`.execute(db)
  await notifyOn('is_active, username, email, roles, email_verified_at').execute(db)
  await sql`alter table users enable always trigger users_notify`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop trigger users_notify on users`.execute(db)
  await notifyOn('is_active, username, email, roles').execute(db)
  await sql`alter table users enable always trigger users_notify`.execute(db)
}
