import { sql, type Kysely } from 'kysely'
import { createPinnedRefreshFunction, schemaTable } from './0006-pinned-search-path.ts'

// Accounts operators manage (the admin API): roles that reach the user's tokens, a disable with
// its reason and end, a soft delete that removes the personal data and the password hash. A
// change of a user's roles notifies every replica like a change of the name or email (their
// session caches hold the roles); a refresh re-signs its pair when the roles it was signed with
// are no longer the user's.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('users')
    .addColumn('roles', sql`text[]`, (c) => c.notNull().defaultTo(sql`'{}'`))
    .addColumn('disabled_reason', 'text')
    .addColumn('disabled_until', 'timestamptz')
    .addColumn('deleted_at', 'timestamptz')
    .execute()
  await db.schema.alterTable('users').alterColumn('password_hash', (c) => c.dropNotNull()).execute()

  await sql`drop trigger users_notify on users`.execute(db)
  await sql`create trigger users_notify after update of is_active, username, email, roles or delete on users
    for each row execute function authgate_notify_sessions()`.execute(db)
  await sql`alter table users enable always trigger users_notify`.execute(db)

  const table = await schemaTable(db)
  await sql`drop function authgate_refresh(uuid, uuid, integer, bigint, uuid, bigint, text, double precision, double precision)`.execute(db)
  // As 0006 made it, and `p_roles`: the roles the pair was signed with. Those are no longer the
  // user's: 'resign', with the user's `roles`, as for another session end.
  await sql`
    create function authgate_refresh(
      p_jti uuid, p_sid uuid, p_user_id integer, p_session_end bigint, p_roles text[],
      p_next_jti uuid, p_next_exp bigint, p_successor text,
      p_grace double precision, p_offset double precision,
      out outcome text, out owner_id integer, out successor text, out session_end timestamptz, out roles text[]
    ) language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    set lock_timeout = '3s'
    as $$
    declare
      t record;
      at_ timestamptz;
    begin
      select r.used_at, r.successor_enc, s.user_id, s.revoked_at, s.expires_at, u.is_active, u.roles into t
        from ${table('refresh_tokens')} r
        join ${table('sessions')} s on s.id = r.session_id
        join ${table('users')} u on u.id = s.user_id
        where r.jti = p_jti and r.session_id = p_sid
        for update of r, s;
      outcome := 'invalid';
      if not found or t.user_id <> p_user_id or t.revoked_at is not null or not t.is_active then
        return;
      end if;
      at_ := pg_catalog.clock_timestamp() + p_offset * interval '1 second';
      if t.expires_at <= at_ then
        return;
      end if;
      owner_id := t.user_id;

      if t.used_at is null then
        if p_session_end is distinct from pg_catalog.floor(extract(epoch from t.expires_at)) or p_roles is distinct from t.roles then
          outcome := 'resign';
          session_end := t.expires_at;
          roles := t.roles;
          return;
        end if;
        update ${table('refresh_tokens')} set used_at = at_, successor_enc = p_successor where jti = p_jti;
        insert into ${table('refresh_tokens')} (jti, session_id, issued_at, expires_at)
          values (p_next_jti, p_sid, at_, pg_catalog.to_timestamp(cast(p_next_exp as double precision)));
        update ${table('sessions')} set last_seen_at = at_ where id = p_sid;
        outcome := 'rotated';
        return;
      end if;

      if t.successor_enc is not null and at_ - t.used_at < p_grace * interval '1 second' then
        outcome := 'replayed';
        successor := t.successor_enc;
        return;
      end if;

      update ${table('sessions')} set revoked_at = at_ where id = p_sid;
      outcome := 'reused';
    end $$`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop function authgate_refresh(uuid, uuid, integer, bigint, text[], uuid, bigint, text, double precision, double precision)`.execute(db)
  await createPinnedRefreshFunction(db)
  await sql`drop trigger users_notify on users`.execute(db)
  await sql`create trigger users_notify after update of is_active, username, email or delete on users
    for each row execute function authgate_notify_sessions()`.execute(db)
  await sql`alter table users enable always trigger users_notify`.execute(db)
  // Hashes removed by a soft delete cannot come back: those users get one no password matches.
  await sql`update users set password_hash = '!' where password_hash is null`.execute(db)
  await db.schema.alterTable('users').alterColumn('password_hash', (c) => c.setNotNull()).execute()
  await db.schema.alterTable('users').dropColumn('roles').dropColumn('disabled_reason').dropColumn('disabled_until').dropColumn('deleted_at').execute()
}
