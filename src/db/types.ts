import type { ColumnType, Generated, Selectable } from 'kysely'

type Timestamp = ColumnType<Date, Date | string, Date | string>

export interface UsersTable {
  id: ColumnType<number, never, never>
  username: string
  email: string
  /** None once the account was deleted (soft): no password matches. */
  password_hash: string | null
  is_active: Generated<boolean>
  created_at: Generated<Date>
  last_login_at: Timestamp | null
  roles: ColumnType<string[], string[] | undefined, string[]>
  disabled_reason: string | null
  disabled_until: Timestamp | null
  deleted_at: Timestamp | null
  email_verified_at: Timestamp | null
  /** Failed second steps in a row; at 10 the second step is locked until mfa_locked_until. */
  mfa_failures: Generated<number>
  mfa_locked_until: Timestamp | null
  /** The user handle of every passkey of the user (base64url of 32 random bytes), made with the first. */
  webauthn_user_handle: string | null
}

export interface SessionsTable {
  id: string
  user_id: number
  created_at: Timestamp
  last_seen_at: Timestamp
  expires_at: Timestamp
  revoked_at: Timestamp | null
  user_agent: string | null
  ip: string | null
}

export interface RefreshTokensTable {
  jti: string
  session_id: string
  issued_at: Timestamp
  expires_at: Timestamp
  used_at: Timestamp | null
  // The pair issued when this token was used, encrypted: answered again to a retry within the grace.
  successor_enc: string | null
}

export interface SigningKeysTable {
  kid: string
  alg: string
  public_jwk: Record<string, unknown> | null
  private_key_enc: string
  created_at: Generated<Date>
  retired_at: Timestamp | null
  /** Published, not signing yet: the next key of a rotation. */
  next: Generated<boolean>
}

export interface AuditEventsTable {
  id: ColumnType<string, never, never>
  at: Timestamp
  event: string
  outcome: 'success' | 'failure'
  user_id: number | null
  session_id: string | null
  identifier: string | null
  ip: string | null
  user_agent: string | null
  detail: ColumnType<Record<string, unknown> | null, string | null, string | null>
}

export interface OneTimeCodesTable {
  id: string
  purpose: string
  /** None for a secret of no user yet (an upstream sign-in's flow). */
  user_id: number | null
  token_hash: string | null
  code_hash: string | null
  attempts: Generated<number>
  max_attempts: number
  created_at: Timestamp
  expires_at: Timestamp
  consumed_at: Timestamp | null
  detail: ColumnType<Record<string, unknown> | null, string | null, string | null>
}

/** The tries of a mailed code, per purpose and address typed (an account's or not). */
export interface MailCodeTriesTable {
  purpose: string
  email: string
  tries: number
  created_at: Timestamp
}

export interface MfaFactorsTable {
  id: string
  user_id: number
  kind: 'totp'
  secret_sealed: string
  created_at: Timestamp
  verified_at: Timestamp | null
  /** The last TOTP time step accepted: a code of it or of an earlier one is refused. */
  last_step: ColumnType<string | null, number | null, number | null>
}

export interface RecoveryCodesTable {
  id: string
  user_id: number
  code_hash: string
  created_at: Timestamp
  used_at: Timestamp | null
}

export interface MailOutboxTable {
  id: string
  kind: string
  sealed: string
  prepared: Generated<boolean>
  attempts: Generated<number>
  created_at: Timestamp
  due_at: Timestamp
  expires_at: Timestamp | null
  last_error: string | null
}

export interface OAuthClientsTable {
  id: string
  name: string
  scopes: string[]
  audiences: string[]
  token_ttl_s: number
  jwks: ColumnType<{ keys: Array<Record<string, unknown>> } | null, string | null, string | null>
  /** RFC 7591's token_endpoint_auth_method: a secret, or a key (and then no secret). */
  token_endpoint_auth_method: 'client_secret_basic' | 'private_key_jwt' | 'none'
  created_at: Timestamp
  disabled_at: Timestamp | null
  /** The audiences it may exchange tokens toward (RFC 8693). */
  exchange_audiences: Generated<string[]>
  /** A workload client's (RFC 7523 §2.1, token_endpoint_auth_method `none`): the issuer it trusts, where its keys are, for which subjects, signed how. */
  trusted_issuer: string | null
  trusted_jwks_uri: string | null
  trusted_subjects: string[] | null
  trusted_alg: string | null
}

export interface OAuthClientSecretsTable {
  id: string
  client_id: string
  secret_hash: string
  created_at: Timestamp
  expires_at: Timestamp | null
}

export interface OAuthClientAssertionsTable {
  client_id: string
  jti: string
  expires_at: Timestamp
}

/** An upstream provider's identity (issuer, subject) linked to a user. */
export interface UserIdentitiesTable {
  id: string
  user_id: number
  provider: string
  issuer: string
  subject: string
  email: string | null
  email_verified: boolean
  created_at: Timestamp
  last_used_at: Timestamp | null
}

/** A passkey (WebAuthn credential) of a user. */
export interface PasskeysTable {
  id: string
  user_id: number
  credential_id: string
  /** The COSE public key, base64url. */
  public_key: string
  /** The signature counter it last showed (bigint: read as a string). */
  counter: ColumnType<string, number, number>
  transports: ColumnType<string[], string, string>
  device_type: 'singleDevice' | 'multiDevice'
  backed_up: boolean
  aaguid: string
  name: string
  created_at: Timestamp
  last_used_at: Timestamp | null
}

export interface Database {
  users: UsersTable
  sessions: SessionsTable
  refresh_tokens: RefreshTokensTable
  signing_keys: SigningKeysTable
  audit_events: AuditEventsTable
  one_time_codes: OneTimeCodesTable
  mail_code_tries: MailCodeTriesTable
  oauth_clients: OAuthClientsTable
  oauth_client_secrets: OAuthClientSecretsTable
  oauth_client_assertions: OAuthClientAssertionsTable
  mail_outbox: MailOutboxTable
  mfa_factors: MfaFactorsTable
  recovery_codes: RecoveryCodesTable
  user_identities: UserIdentitiesTable
  passkeys: PasskeysTable
}

export type SigningKeyRow = Selectable<SigningKeysTable>
