import { sql, type Kysely } from 'kysely'
import { createNotifyFunction } from './0004-session-notifications.ts'
import * as refreshFunction from './0005-refresh-function.ts'

// authgate beside other database roles (CVE-2018-1058): a role that may create in a schema of
// the search path could plant a better-matching overload (`to_timestamp(bigint)` for the
// `to_timestamp(p_next_exp)` of 0005) that authgate's own functions would then run with its
// rights. Every function is made again with `search_path = pg_catalog, pg_temp` (pg_temp is
// never searched for functions or operators), its tables named with their schema, and every
// call given the exact types pg_catalog's functions take.
//
// And revocations that fire no row trigger: TRUNCATE tells every replica to forget all it holds
// (`*`), and the triggers fire under session_replication_role = replica too (ENABLE ALWAYS),
// as logical replication and some restore tools set it. A key change tells them to reload.
export async function up (db: Kysely<any>): Promise<void> {
  await createPinnedRefreshFunction(db)

  await sql`
    create or replace function authgate_notify_sessions() returns trigger language plpgsql
    set search_path = pg_catalog, pg_temp
    as $$
    begin
      if tg_op = 'TRUNCATE' then
        perform pg_catalog.pg_notify('authgate_sessions', '*');
      else
        perform pg_catalog.pg_notify('authgate_sessions', case when tg_table_name = 'sessions' then 's:' else 'u:' end || cast(old.id as text));
      end if;
      return null;
    end $$`.execute(db)
  await sql`create trigger sessions_truncate_notify after truncate on sessions
    for each statement execute function authgate_notify_sessions()`.execute(db)
  await sql`create trigger users_truncate_notify after truncate on users
    for each statement execute function authgate_notify_sessions()`.execute(db)

  await sql`
    create function authgate_notify_keys() returns trigger language plpgsql
    set search_path = pg_catalog, pg_temp
    as $$
    begin
      perform pg_catalog.pg_notify('authgate_keys', '');
      return null;
    end $$`.execute(db)
  await sql`create trigger signing_keys_notify after insert or update or delete or truncate on signing_keys
    for each statement execute function authgate_notify_keys()`.execute(db)

  for (const [name, on] of [['sessions_notify', 'sessions'], ['users_notify', 'users'], ['sessions_truncate_notify', 'sessions'],
    ['users_truncate_notify', 'users'], ['signing_keys_notify', 'signing_keys']] as const) {
    await sql`alter table ${sql.id(on)} enable always trigger ${sql.id(name)}`.execute(db)
  }
}

/** A table of the current schema, named with it: nothing resolves through the search path. */
export async function schemaTable (db: Kysely<any>): Promise<(name: string) => ReturnType<typeof sql>> {
  const { rows } = await sql<{ schema: string }>`select current_schema() as schema`.execute(db)
  const schema = sql.id(rows[0]!.schema)
  return (name: string) => sql`${schema}.${sql.id(name)}`
}

/** authgate_refresh as this migration made it (0009 replaces it, and puts it back on the way down). */
export async function createPinnedRefreshFunction (db: Kysely<any>): Promise<void> {
  const table = await schemaTable(db)
  await sql`
    create or replace function authgate_refresh(
      p_jti uuid, p_sid uuid, p_user_id integer, p_session_end bigint,
      p_next_jti uuid, p_next_exp bigint, p_successor text,
      p_grace double precision, p_offset double precision,
      out outcome text, out owner_id integer, out successor text, out session_end timestamptz
    ) language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    -- A refresh waiting on another's row locks gives up as every request does (DB_TIMEOUTS_MS).
    set lock_timeout = '3s'
    as $$
    declare
      t record;
      at_ timestamptz;
    begin
      select r.used_at, r.successor_enc, s.user_id, s.revoked_at, s.expires_at, u.is_active into t
        from ${table('refresh_tokens')} r
        join ${table('sessions')} s on s.id = r.session_id
        join ${table('users')} u on u.id = s.user_id
        where r.jti = p_jti and r.session_id = p_sid
        for update of r, s;
      outcome := 'invalid';
      if not found or t.user_id <> p_user_id or t.revoked_at is not null or not t.is_active then
        return;
      end if;
      -- After the locks: a refresh that waited for them sees a time after the first one's.
      at_ := pg_catalog.clock_timestamp() + p_offset * interval '1 second';
      if t.expires_at <= at_ then
        return;
      end if;
      owner_id := t.user_id;

      if t.used_at is null then
        if p_session_end is distinct from pg_catalog.floor(extract(epoch from t.expires_at)) then
          outcome := 'resign';
          session_end := t.expires_at;
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
  await sql`drop trigger signing_keys_notify on signing_keys`.execute(db)
  await sql`drop function authgate_notify_keys()`.execute(db)
  await sql`drop trigger users_truncate_notify on users`.execute(db)
  await sql`drop trigger sessions_truncate_notify on sessions`.execute(db)
  await sql`alter table sessions enable trigger sessions_notify`.execute(db)
  await sql`alter table users enable trigger users_notify`.execute(db)
  await createNotifyFunction(db)
  await refreshFunction.up(db)
}
