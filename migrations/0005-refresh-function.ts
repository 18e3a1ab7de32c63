import { sql, type Kysely } from 'kysely'

// POST /api/token/refresh in one round trip (src/services/sessions/sessions.ts): the caller signs and
// seals the next pair first, for the session end its refresh token names (`sxp`), and this
// function, one statement and so one transaction, locks the token and session rows, reads the
// time once the locks are held, and then rotates, answers the sealed pair of a retry within
// the grace, or revokes the session on reuse. The caller's clock reaches it as `p_offset`,
// seconds to add to clock_timestamp() (0 but in tests).
//
// outcome: 'invalid' (no such token of an active session of that user), 'rotated',
// 'replayed' (successor: the sealed pair the first use got), 'reused' (session revoked), or
// 'resign' (the token is unused, but the pair was signed for another session end, or none:
// session_end is the real one; nothing changed).
export async function up (db: Kysely<any>): Promise<void> {
  // `or replace`: 0006 puts this body back on its way down.
  await sql`
    create or replace function authgate_refresh(
      p_jti uuid, p_sid uuid, p_user_id integer, p_session_end bigint,
      p_next_jti uuid, p_next_exp bigint, p_successor text,
      p_grace double precision, p_offset double precision,
      out outcome text, out owner_id integer, out successor text, out session_end timestamptz
    ) language plpgsql volatile as $$
    declare
      t record;
      at_ timestamptz;
    begin
      select r.used_at, r.successor_enc, s.user_id, s.revoked_at, s.expires_at, u.is_active into t
        from refresh_tokens r
        join sessions s on s.id = r.session_id
        join users u on u.id = s.user_id
        where r.jti = p_jti and r.session_id = p_sid
        for update of r, s;
      outcome := 'invalid';
      if not found or t.user_id <> p_user_id or t.revoked_at is not null or not t.is_active then
        return;
      end if;
      -- After the locks: a refresh that waited for them sees a time after the first one's.
      at_ := clock_timestamp() + make_interval(secs => p_offset);
      if t.expires_at <= at_ then
        return;
      end if;
      owner_id := t.user_id;

      if t.used_at is null then
        if p_session_end is distinct from floor(extract(epoch from t.expires_at)) then
          outcome := 'resign';
          session_end := t.expires_at;
          return;
        end if;
        update refresh_tokens set used_at = at_, successor_enc = p_successor where jti = p_jti;
        insert into refresh_tokens (jti, session_id, issued_at, expires_at)
          values (p_next_jti, p_sid, at_, to_timestamp(p_next_exp));
        update sessions set last_seen_at = at_ where id = p_sid;
        outcome := 'rotated';
        return;
      end if;

      if t.successor_enc is not null and at_ - t.used_at < make_interval(secs => p_grace) then
        outcome := 'replayed';
        successor := t.successor_enc;
        return;
      end if;

      update sessions set revoked_at = at_ where id = p_sid;
      outcome := 'reused';
    end $$`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop function authgate_refresh(uuid, uuid, integer, bigint, uuid, bigint, text, double precision, double precision)`.execute(db)
}
