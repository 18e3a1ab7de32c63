import { sql, type Kysely } from 'kysely'
import { schemaTable } from './0006-pinned-search-path.ts'

// Refreshes grouped into one statement, and so one transaction and one commit (issue 31):
// concurrent POST /api/token/refresh calls of a replica go to the database together
// (src/services/sessions/rotations.ts). Each item is authgate_refresh (0009) as one call makes
// it, in the order given, so a later item sees what an earlier one did: the same token twice is
// one rotation and one replay. The caller sorts the items by session, so two groups lock the
// sessions they share in the same order. `p_items` is a JSON array of authgate_refresh's
// arguments by name, without `p_`, and `n`, the item's number, which its answer carries.
export async function up (db: Kysely<any>): Promise<void> {
  const table = await schemaTable(db)
  await sql`
    create function authgate_refresh_many(p_items jsonb, p_grace double precision, p_offset double precision)
    returns table (item integer, outcome text, owner_id integer, successor text, session_end timestamptz, roles text[])
    language plpgsql volatile
    set search_path = pg_catalog, pg_temp
    as $$
    declare
      i record;
    begin
      for i in select * from pg_catalog.jsonb_to_recordset(p_items)
        as x(jti uuid, sid uuid, user_id integer, session_end bigint, roles text[], next_jti uuid, next_exp bigint, successor text, n integer)
      loop
        return query select i.n, r.outcome, r.owner_id, r.successor, r.session_end, r.roles
          from ${table('authgate_refresh')}(i.jti, i.sid, i.user_id, i.session_end, i.roles,
            i.next_jti, i.next_exp, i.successor, p_grace, p_offset) r;
      end loop;
    end $$`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop function authgate_refresh_many(jsonb, double precision, double precision)`.execute(db)
}
