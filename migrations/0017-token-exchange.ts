import { sql, type Kysely } from 'kysely'

// Tokens that travel between services (issue 30). A client may exchange the tokens it is given
// (RFC 8693) toward the audiences of `exchange_audiences`, with at most its own scopes. A
// workload client (RFC 7523 §2.1's JWT bearer grant) has no secret and no JWKS: it trusts one
// issuer's tokens (Kubernetes, a CI's OIDC issuer, another authgate) for the subjects listed,
// signed with the one algorithm pinned, the keys read from the issuer's discovery document or
// `trusted_jwks_uri`. Its assertions' jti (or the token's hash) are spent in
// oauth_client_assertions as a private_key_jwt client's are.
export async function up (db: Kysely<any>): Promise<void> {
  await sql`alter table oauth_clients
    add column exchange_audiences text[] not null default cast('{}' as text[]),
    add column trusted_issuer text,
    add column trusted_jwks_uri text,
    add column trusted_subjects text[],
    add column trusted_alg text,
    drop constraint oauth_clients_auth_method_check,
    add constraint oauth_clients_auth_method_check check (
      (token_endpoint_auth_method in ('client_secret_basic', 'private_key_jwt')
        and (jwks is not null) = (token_endpoint_auth_method = 'private_key_jwt')
        and trusted_issuer is null and trusted_jwks_uri is null and trusted_subjects is null and trusted_alg is null)
      or (token_endpoint_auth_method = 'none' and jwks is null and trusted_issuer is not null and trusted_alg is not null
        and trusted_subjects is not null and pg_catalog.cardinality(trusted_subjects) between 1 and 100))`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  // A workload client has no way in without its issuer: it goes, with its spent assertions.
  await sql`delete from oauth_clients where token_endpoint_auth_method = 'none'`.execute(db)
  await sql`alter table oauth_clients
    drop constraint oauth_clients_auth_method_check,
    drop column exchange_audiences,
    drop column trusted_issuer,
    drop column trusted_jwks_uri,
    drop column trusted_subjects,
    drop column trusted_alg,
    add constraint oauth_clients_auth_method_check check (
      (token_endpoint_auth_method = 'client_secret_basic' and jwks is null)
      or (token_endpoint_auth_method = 'private_key_jwt' and jwks is not null))`.execute(db)
}
