import { sql, type Kysely } from 'kysely'

// Service identities (OAuth 2.0 client credentials, RFC 6749 §4.4): a client with the scopes and
// audiences it may ask for, up to two active secrets (a rotation keeps the old one for a grace),
// or a public JWKS for private_key_jwt (RFC 7523), whose assertions are used once. A change of
// a client notifies every replica (`c:<client id>` on authgate_sessions), which caches clients
// as it caches sessions. No row per token: a service token is a signature, nothing else.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('oauth_clients')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('scopes', sql`text[]`, (c) => c.notNull())
    .addColumn('audiences', sql`text[]`, (c) => c.notNull())
    .addColumn('token_ttl_s', 'integer', (c) => c.notNull().check(sql`token_ttl_s between 1 and 86400`))
    .addColumn('jwks', 'jsonb')
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    .addColumn('disabled_at', 'timestamptz')
    .addCheckConstraint('oauth_clients_audiences_check', sql`cardinality(audiences) >= 1`)
    .execute()

  await db.schema.createTable('oauth_client_secrets')
    .addColumn('id', 'uuid', (c) => c.primaryKey())
    .addColumn('client_id', 'text', (c) => c.notNull().references('oauth_clients.id').onDelete('cascade'))
    // SHA-256 of the secret (256 random bits: nothing to stretch), base64url.
    .addColumn('secret_hash', 'text', (c) => c.notNull())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull())
    // Set when a rotation replaced it: it works until then.
    .addColumn('expires_at', 'timestamptz')
    .execute()
  await db.schema.createIndex('oauth_client_secrets_client_id_idx').on('oauth_client_secrets').column('client_id').execute()

  await db.schema.createTable('oauth_client_assertions')
    .addColumn('client_id', 'text', (c) => c.notNull().references('oauth_clients.id').onDelete('cascade'))
    .addColumn('jti', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'timestamptz', (c) => c.notNull())
    .addPrimaryKeyConstraint('oauth_client_assertions_pkey', ['client_id', 'jti'])
    .execute()
  await db.schema.createIndex('oauth_client_assertions_expires_at_idx').on('oauth_client_assertions').column('expires_at').execute()

  await sql`
    create function authgate_notify_clients() returns trigger language plpgsql
    set search_path = pg_catalog, pg_temp
    as $$
    begin
      if tg_op = 'TRUNCATE' then
        perform pg_catalog.pg_notify('authgate_sessions', '*');
      elsif tg_table_name = 'oauth_clients' then
        perform pg_catalog.pg_notify('authgate_sessions', 'c:' || coalesce(new.id, old.id));
      else
        perform pg_catalog.pg_notify('authgate_sessions', 'c:' || coalesce(new.client_id, old.client_id));
      end if;
      return null;
    end $$`.execute(db)
  for (const table of ['oauth_clients', 'oauth_client_secrets']) {
    await sql`create trigger ${sql.id(`${table}_notify`)} after insert or update or delete on ${sql.id(table)}
      for each row execute function authgate_notify_clients()`.execute(db)
    await sql`create trigger ${sql.id(`${table}_truncate_notify`)} after truncate on ${sql.id(table)}
      for each statement execute function authgate_notify_clients()`.execute(db)
    await sql`alter table ${sql.id(table)} enable always trigger ${sql.id(`${table}_notify`)}`.execute(db)
    await sql`alter table ${sql.id(table)} enable always trigger ${sql.id(`${table}_truncate_notify`)}`.execute(db)
  }
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('oauth_client_assertions').execute()
  await db.schema.dropTable('oauth_client_secrets').execute()
  await db.schema.dropTable('oauth_clients').execute()
  await sql`drop function authgate_notify_clients()`.execute(db)
}
