import { sql, type Kysely } from 'kysely'

// Each client authenticates one way (RFC 7591's token_endpoint_auth_method): with its secret
// (client_secret_basic: HTTP Basic, or the same secret as client_secret_post), or with a key
// (private_key_jwt) and then no secret at all. Clients made before are set from what they have:
// a JWKS means private_key_jwt, and the secret every client used to get at its making is
// deleted, so it stops working; a client without one keeps its secret, sent either way as before.
//
// Introspection answers a client only for the tokens addressed to it (issue 26): the clients
// that held `introspect` were asking about users' tokens too, so they get `introspect:users`,
// which keeps that; what they lose is other services' tokens.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('oauth_clients').addColumn('token_endpoint_auth_method', 'text').execute()
  await sql`update oauth_clients
    set token_endpoint_auth_method = case when jwks is null then 'client_secret_basic' else 'private_key_jwt' end`.execute(db)
  await sql`alter table oauth_clients
    alter column token_endpoint_auth_method set not null,
    add constraint oauth_clients_auth_method_check check (
      (token_endpoint_auth_method = 'client_secret_basic' and jwks is null)
      or (token_endpoint_auth_method = 'private_key_jwt' and jwks is not null))`.execute(db)
  await sql`delete from oauth_client_secrets s using oauth_clients c
    where c.id = s.client_id and c.token_endpoint_auth_method = 'private_key_jwt'`.execute(db)
  await sql`update oauth_clients
    set scopes = pg_catalog.array_append(scopes, cast('introspect:users' as text))
    where cast('introspect' as text) = any (scopes) and not cast('introspect:users' as text) = any (scopes)`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  // The secrets deleted are gone: a private_key_jwt client stays without one.
  await sql`update oauth_clients set scopes = pg_catalog.array_remove(scopes, cast('introspect:users' as text))`.execute(db)
  await db.schema.alterTable('oauth_clients').dropColumn('token_endpoint_auth_method').execute()
}
