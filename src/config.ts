import { compile as compileTrust } from '@fastify/proxy-addr'
import { Type, type Static } from '@sinclair/typebox'
import envSchema from 'env-schema'
import { createPrivateKey, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { chmod, link, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import { join } from 'node:path'
import { parseEnv } from 'node:util'
import { MAKE_A_SECRET, secretWeakness } from './lib/secret-strength.ts'
import { parseProviders, parseReturnUrls, type UpstreamProvider } from './lib/upstream-providers.ts'

/** A string from a fixed list: one `enum` keyword, so a bad value is told the allowed ones. */
const OneOf = <const T extends readonly string[]>(values: T, options: { default?: T[number] } = {}) =>
  Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options })

const DURATION_HINT = 'a number of seconds, or a number with s, m, h or d (300, 15m, 12h, 7d)'
// Seconds ("300") or a number with a unit ("15m", "7d"), as the seed's settings accepted.
const Duration = (defaultValue: string) =>
  Type.String({ pattern: '^[0-9]{1,10}[smhd]?$', default: defaultValue, description: DURATION_HINT })

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export const ALGORITHMS = ['ES256', 'EdDSA', 'RS256', 'HS256'] as const

/**
 * The durations, each a variable of the schema and a field of seconds derived from it, at
 * least `min` seconds (and at most 3650 days).
 */
const DURATIONS = {
  JWT_ACCESS_TOKEN_LIFETIME: { field: 'accessTtlS', default: '5m', min: 1 },
  JWT_REFRESH_TOKEN_LIFETIME: { field: 'refreshTtlS', default: '1d', min: 1 },
  // A session's absolute end, however often it is refreshed.
  AUTH_SESSION_MAX_LIFETIME: { field: 'sessionMaxS', default: '30d', min: 1 },
  // How often each replica prunes ended sessions and expired refresh tokens.
  AUTH_PRUNE_INTERVAL: { field: 'pruneIntervalS', default: '10m', min: 1 },
  // How long verifiers and gateways may cache the JWKS.
  JWKS_MAX_AGE: { field: 'jwksMaxAgeS', default: '5m', min: 1 },
  // How long the audit trail keeps its events.
  AUDIT_RETENTION: { field: 'auditRetentionS', default: '90d', min: 1 },
  RATE_LIMIT_WINDOW: { field: 'rateLimitWindowS', default: '1m', min: 1 },
  // On SIGTERM, /health/ready answers 503 this long while requests are still served, so a
  // gateway stops routing here before the server closes.
  SHUTDOWN_DRAIN_DELAY: { field: 'drainDelayS', default: '5s', min: 0 },
  // How long a start waits, retrying, for a database that does not answer yet.
  DB_START_TIMEOUT: { field: 'dbStartTimeoutS', default: '30s', min: 0 },
  // How long the link and the code of a password reset mail work.
  PASSWORD_RESET_LIFETIME: { field: 'passwordResetTtlS', default: '30m', min: 60 },
  // How long a verification mail's link and code work, and an email sign-in code.
  EMAIL_VERIFICATION_LIFETIME: { field: 'emailVerificationTtlS', default: '24h', min: 60 },
  EMAIL_SIGN_IN_LIFETIME: { field: 'emailSignInTtlS', default: '10m', min: 60 }
} as const
type Durations = typeof DURATIONS
type DurationSeconds = { readonly [K in keyof Durations as Durations[K]['field']]: number }

const durationSchemas = Object.fromEntries(Object.entries(DURATIONS).map(([name, { default: value }]) => [name, Duration(value)])) as
  { [K in keyof Durations]: ReturnType<typeof Duration> }

const PostgresUrl = Type.String({ pattern: '^postgres(ql)?://', description: 'a URL postgres://user:password@host:5432/database' })

/** The one configuration schema, of the environment (or .env) as it is given. */
export const ConfigSchema = Type.Object({
  NODE_ENV: OneOf(['development', 'production', 'test'], { default: 'development' }),
  DEBUG: Type.Boolean({ default: false }),
  // Unset: 'debug' when DEBUG is true, 'info' otherwise.
  LOG_LEVEL: Type.Optional(OneOf(LOG_LEVELS)),
  HOST: Type.String({ default: '127.0.0.1' }),
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  // Fastify's trustProxy: a hop count, or addresses/CIDRs separated by commas; empty: off.
  TRUST_PROXY: Type.String({ default: '' }),

  SECRET_KEY: Type.Optional(Type.String()),

  // Unset: postgres when DATABASE_URL is set, else pglite.
  DB_ENGINE: Type.Optional(OneOf(['pglite', 'postgres'])),
  DB_NAME: Type.String({ minLength: 1, default: './data' }),
  DATABASE_URL: Type.Optional(PostgresUrl),
  // A direct connection (never through a transaction pooler) for LISTEN; DATABASE_URL when unset.
  DATABASE_LISTEN_URL: Type.Optional(PostgresUrl),
  DB_POOL_MAX: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),

  JWT_ALGORITHM: OneOf(ALGORITHMS, { default: 'ES256' }),
  // An operator's own signing key (a PEM, or a file holding one) instead of the database's.
  JWT_PRIVATE_KEY: Type.Optional(Type.String({ minLength: 1 })),
  JWT_PRIVATE_KEY_FILE: Type.Optional(Type.String({ minLength: 1 })),
  // Unset: the public URL (OIDC Discovery §4.3: the issuer is the URL its metadata is found under).
  JWT_ISSUER: Type.Optional(Type.String({ minLength: 1 })),
  JWT_AUDIENCE: Type.String({ minLength: 1, default: 'authgate' }),
  // The public base URL (https://auth.example.com): the issuer, and absolute URLs in the
  // discovery document. Required in production.
  PUBLIC_URL: Type.Optional(Type.String({ pattern: '^https?://[^/?#]+(/[^?#]*)?$', description: 'an absolute http(s) URL without query, like https://auth.example.com' })),
  // Services allowed to call token introspection: id:secret pairs separated by commas.
  INTROSPECTION_CLIENTS: Type.String({ default: '' }),
  // The roles an operator may give users (the admin API): short names, separated by commas.
  ROLES: Type.String({ default: '' }),
  // The client_id of users' access tokens (RFC 9068 §2.2): the first-party client they signed in with.
  OAUTH_FIRST_PARTY_CLIENT_ID: Type.String({ minLength: 1, maxLength: 64, pattern: '^[\\x21-\\x7e]+$', default: 'authgate' }),
  AUTH_REUSE_GRACE_S: Type.Integer({ minimum: 0, maximum: 300, default: 10 }),

  BCRYPT_COST: Type.Integer({ minimum: 4, maximum: 15, default: 12 }),

  COOKIE_SECURE: Type.Boolean({ default: true }),
  COOKIE_SAMESITE: OneOf(['lax', 'strict', 'none'], { default: 'lax' }),
  COOKIE_DOMAIN: Type.Optional(Type.String({ minLength: 1 })),
  // Browser front ends allowed to call with credentials: exact origins separated by commas.
  CORS_ORIGINS: Type.String({ default: '' }),

  // Requests per RATE_LIMIT_WINDOW: per client IP on each credential endpoint (register, login,
  // token, password), per account on those from any IP, per client IP on each token endpoint
  // (refresh, verify, blacklist, introspect), per client IP on unknown paths.
  RATE_LIMIT_ENABLED: Type.Boolean({ default: true }),
  RATE_LIMIT_CREDENTIALS_MAX: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 20 }),
  RATE_LIMIT_IDENTIFIER_MAX: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 10 }),
  RATE_LIMIT_TOKEN_MAX: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 300 }),
  RATE_LIMIT_NOT_FOUND_MAX: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 60 }),
  RATE_LIMIT_CLIENT_MAX: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 600 }),
  // Shared rate-limit counters for several replicas; in memory when unset.
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://', description: 'a URL redis://host:6379 or rediss://host:6380' })),

  // GET /metrics answers only with this token as Bearer; unset, there is no /metrics.
  METRICS_TOKEN: Type.Optional(Type.String()),
  // The OpenAPI document and its UI at /docs. Unset: on, except in production.
  DOCS_ENABLED: Type.Optional(Type.Boolean()),

  // Mail: the SMTP server (smtp://user:password@host:587, smtps:// for TLS from the start), and
  // the sender. Unset: no mail is sent, each is a line in the log.
  SMTP_URL: Type.Optional(Type.String({ pattern: '^smtps?://', description: 'a URL smtp://user:password@host:587 or smtps://host:465' })),
  MAIL_FROM: Type.Optional(Type.String({ minLength: 3 })),
  // A folder of mail templates replacing the built-in ones (src/templates/mail/) file by file.
  MAIL_TEMPLATES_DIR: Type.Optional(Type.String({ minLength: 1 })),
  // The front end's page that reads a reset link's token from the fragment and posts it; the
  // password reset exists only when it is set (a link is never built from the request's Host).
  APP_RESET_URL: Type.Optional(Type.String({ pattern: '^https?://[^#]+$', description: 'an absolute http(s) URL without a fragment, like https://app.example.com/reset-password' })),
  // Verifying users' addresses: off; optional (a mail at registration, sign-in not gated);
  // required (sign-in refused until the address is verified).
  EMAIL_VERIFICATION: OneOf(['off', 'optional', 'required'], { default: 'off' }),
  // The front end's page that reads a verification link's token from the fragment and posts it.
  APP_VERIFY_URL: Type.Optional(Type.String({ pattern: '^https?://[^#]+$', description: 'an absolute http(s) URL without a fragment, like https://app.example.com/verify-email' })),
  // Passwordless sign-in by a code sent by mail.
  EMAIL_SIGN_IN: Type.Boolean({ default: false }),
  // Mail requests (password reset, verification, email sign-in): per client IP, and from everyone together, a window.
  RATE_LIMIT_MAIL_MAX: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 5 }),
  RATE_LIMIT_MAIL_GLOBAL_MAX: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 300 }),
  // The name authenticator apps show beside a TOTP factor (the otpauth URI's issuer).
  TOTP_ISSUER: Type.String({ minLength: 1, maxLength: 64, pattern: '^[^:]+$', default: 'authgate' }),

  // Passkeys (WebAuthn): the relying party's id, the domain passkeys are bound to (example.com or
  // auth.example.com, never a URL), and the exact origins of the pages that call WebAuthn,
  // separated by commas (https://<WEBAUTHN_RP_ID> when unset). Unset RP id: no passkeys.
  WEBAUTHN_RP_ID: Type.Optional(Type.String({ minLength: 1, maxLength: 253 })),
  WEBAUTHN_ORIGINS: Type.String({ default: '' }),
  // The name a browser shows when it makes a passkey.
  WEBAUTHN_RP_NAME: Type.String({ minLength: 1, maxLength: 64, default: 'authgate' }),

  // Sign-in with upstream identity providers: their names, separated by commas, each set by
  // OIDC_<NAME>_* (src/lib/upstream-providers.ts, docs/sign-in-with-providers.md).
  OIDC_PROVIDERS: Type.String({ default: '' }),
  // The pages a browser may be sent back to after an upstream sign-in: exact URLs, separated by commas.
  OIDC_RETURN_URLS: Type.String({ default: '' }),

  ...durationSchemas
})

type Env = Static<typeof ConfigSchema>
export type Algorithm = Env['JWT_ALGORITHM']
export type LogLevel = (typeof LOG_LEVELS)[number]

/** Fastify's trustProxy as a function: whether the hop-th address from the socket is a trusted proxy. */
export type TrustProxy = false | ((address: string, hop: number) => boolean)

/** The validated configuration with its derived values; `SECRET_KEY` may still be missing. */
export type ParsedConfig = Readonly<Omit<Env, 'DB_ENGINE' | 'JWT_ISSUER' | 'DOCS_ENABLED' | 'MAIL_FROM'> & DurationSeconds & {
  DB_ENGINE: 'pglite' | 'postgres'
  JWT_ISSUER: string
  DOCS_ENABLED: boolean
  /** The sender of authgate's mail: MAIL_FROM, else no-reply at the public URL's host. */
  MAIL_FROM: string
  logLevel: LogLevel
  trustProxy: TrustProxy
  /** The public base URL without a trailing slash; unset outside production: taken from each request. */
  publicUrl: string | undefined
  /** The exact origins CORS allows, with credentials. */
  corsOrigins: readonly string[]
  /** Introspection client ids and their secrets. */
  introspectionClients: ReadonlyMap<string, string>
  /** The roles users may be given (ROLES). */
  roles: ReadonlySet<string>
  /** The audience of the admin API's tokens: `<PUBLIC_URL>/api/admin`. */
  adminAudience: string
  /** Cookie prefixes (RFC 6265bis §4.1.3): __Host- needs Secure, Path=/ and no Domain. */
  cookieNames: Readonly<{ access: string, refresh: string, binding: string, flow: string }>
  /** Which optional features are on (src/lib/feature-routes.ts lists their routes), decided here once. */
  features: Readonly<Features>
  /** The upstream identity providers (OIDC_PROVIDERS), each judged whole. */
  upstreamProviders: readonly UpstreamProvider[]
  /** The pages an upstream sign-in may return to (OIDC_RETURN_URLS), compared whole. */
  returnUrls: ReadonlySet<string>
  /** The origins a passkey's answer may come from (WEBAUTHN_ORIGINS, else https://<WEBAUTHN_RP_ID>). */
  passkeyOrigins: readonly string[]
}>

/** The features that exist only when a setting turns them on. */
export interface Features {
  passwordReset: boolean
  emailVerification: boolean
  emailSignIn: boolean
  metrics: boolean
  docs: boolean
  upstream: boolean
  passkeys: boolean
}

/** The configuration the service runs with: `SECRET_KEY` resolved. */
export type Config = ParsedConfig & { readonly SECRET_KEY: string }

/** A configuration that cannot run; the message names the variable and says what it takes. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

export const MIN_SECRET_LENGTH = 32
const ROLE = /^[a-z][a-z0-9_.:-]{0,31}$/
// The estimated bits (src/lib/secret-strength.ts) a secret needs in production.
const SECRET_BITS = { key: 96, token: 48 } as const
const MAX_DURATION_S = 3650 * 86400
const UNIT_SECONDS = { s: 1, m: 60, h: 3600, d: 86400 } as const

/** "300" or "300s" -> 300, "15m" -> 900, "7d" -> 604800: the schema guarantees the shape. */
export function durationToSeconds (value: string): number {
  const unit = value.at(-1) as string
  if (unit in UNIT_SECONDS) return Number(value.slice(0, -1)) * UNIT_SECONDS[unit as keyof typeof UNIT_SECONDS]
  return Number(value)
}

interface AjvError { instancePath: string, keyword: string, params: Record<string, unknown>, message?: string }

// One sentence per variable, in words a person setting it can act on.
function describe (error: AjvError, env: Record<string, unknown>): string {
  const name = error.instancePath.slice(1)
  const schema = (ConfigSchema.properties as Record<string, Record<string, unknown> | undefined>)[name] ?? {}
  const given = `, not ${JSON.stringify(env[name])}`
  switch (error.keyword) {
    case 'enum': return `${name} must be one of ${(error.params.allowedValues as string[]).join(', ')}${given}`
    case 'pattern': return `${name} must be ${String(schema.description ?? `like ${String(error.params.pattern)}`)}${given}`
    case 'type': return `${name} must be ${schema.type === 'boolean' ? 'true or false' : 'a whole number'}${given}`
    case 'minimum': case 'maximum':
      return `${name} must be between ${String(schema.minimum)} and ${String(schema.maximum)}${given}`
    case 'minLength': return `${name} must not be empty`
    default: return `${name} ${error.message ?? 'is not valid'}${given}`
  }
}

function parseTrustProxy (value: string): TrustProxy {
  if (value === '' || value === 'false') return false
  // Trusting every hop takes the leftmost X-Forwarded-For entry, which the client writes.
  if (value === 'true') throw new ConfigError('TRUST_PROXY=true would take a client address any client can write: give the number of proxies in front of authgate (1), or their addresses/CIDRs separated by commas')
  // A hop count: trust that many proxies in front of the service.
  if (/^[0-9]+$/.test(value)) return (_address, hop) => hop < Number(value)
  try {
    return compileTrust(value.split(',').map((part) => part.trim()))
  } catch (error) {
    throw new ConfigError(`TRUST_PROXY must be a hop count, or IP addresses/CIDRs separated by commas: ${(error as Error).message}`)
  }
}

// A domain name in lower case, as an RP id is and an origin's host must be: no wildcard.
const DOMAIN = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/

/**
 * The origins passkeys may be used from: WEBAUTHN_ORIGINS, else https://<WEBAUTHN_RP_ID>. Each an
 * exact origin, https (http only on localhost, as browsers allow), on the RP id or a subdomain
 * of it: a browser refuses any other, so it is named at start rather than at a user's first try.
 */
function parsePasskeyOrigins (rpId: string | undefined, value: string, problems: string[]): string[] {
  if (rpId === undefined) {
    if (value !== '') problems.push('WEBAUTHN_ORIGINS needs WEBAUTHN_RP_ID: the domain the passkeys are bound to')
    return []
  }
  // An IP address is no RP id: browsers take a domain only (WebAuthn §5.1.3, a valid domain).
  if (!DOMAIN.test(rpId) || isIP(rpId) !== 0) {
    problems.push(`WEBAUTHN_RP_ID must be a domain in lower case like example.com or auth.example.com (no scheme, port or path), not ${JSON.stringify(rpId)}`)
    return []
  }
  // On a laptop the front end's port is its own: there is no default to guess.
  if (value === '' && rpId === 'localhost') {
    problems.push('WEBAUTHN_RP_ID=localhost needs WEBAUTHN_ORIGINS: the exact origin of the front end\'s page, like http://localhost:5173')
    return []
  }
  const origins = value === '' ? [`https://${rpId}`] : value.split(',').map((o) => o.trim()).filter(Boolean)
  for (const origin of origins) {
    let parsed: URL | undefined
    try { parsed = new URL(origin) } catch {}
    const local = parsed?.hostname === 'localhost'
    // A `*` in the host parses as a name, never as a pattern: such an origin would match no page.
    if (parsed === undefined || parsed.origin !== origin || !(parsed.protocol === 'https:' || (local && parsed.protocol === 'http:')) ||
      !DOMAIN.test(parsed.hostname) || !(parsed.hostname === rpId || parsed.hostname.endsWith(`.${rpId}`))) {
      problems.push(`WEBAUTHN_ORIGINS must be exact origins (https, or http on localhost) on ${rpId} or its subdomains, like https://${rpId}, separated by commas, not ${JSON.stringify(origin)}`)
      break
    }
  }
  return origins
}

// Exact origins only: a wildcard cannot go with credentials, and a pattern is a mistake waiting.
function parseOrigins (value: string, problems: string[]): string[] {
  const origins = value.split(',').map((o) => o.trim()).filter(Boolean)
  for (const origin of origins) {
    let parsed: URL | undefined
    try { parsed = new URL(origin) } catch {}
    if (parsed === undefined || !/^https?:$/.test(parsed.protocol) || parsed.origin !== origin) {
      problems.push(`CORS_ORIGINS must be exact origins like https://app.example.com or http://localhost:5173 (scheme, host and port; no path, no wildcard), separated by commas, not ${JSON.stringify(origin)}`)
      break
    }
  }
  return origins
}

/**
 * The schema's values, or, when some variables fail it, the others' values with those set to
 * their defaults (or removed), and a sentence for each that failed: the checks that follow still
 * judge the rest, so one message names every bad variable.
 */
function validate (env: Record<string, string | undefined>): { values: Env, problems: string[], failed: Set<string> } {
  const data: Record<string, string | undefined> = { ...env }
  const problems: string[] = []
  const failed = new Set<string>()
  for (;;) {
    try {
      return { values: envSchema({ schema: structuredClone(ConfigSchema), data, env: false, dotenv: false }), problems, failed }
    } catch (error) {
      const errors = ((error as { errors?: AjvError[] }).errors ?? [])
      if (errors.length === 0) throw new ConfigError((error as Error).message)
      for (const e of errors) {
        const name = e.instancePath.slice(1)
        if (!failed.has(name)) problems.push(describe(e, env))
        failed.add(name)
        delete data[name]
      }
    }
  }
}

/**
 * Validates the environment and derives what the service needs from it. Pure: the same
 * variables give the same configuration, or the same ConfigError naming every bad variable.
 */
export function parseConfig (env: Record<string, string | undefined>): ParsedConfig {
  const { values, problems, failed } = validate(env)
  const production = values.NODE_ENV === 'production'

  const seconds = Object.fromEntries(Object.entries(DURATIONS).map(([name, { field, min }]) => {
    const value = values[name as keyof Durations]
    const s = durationToSeconds(value)
    if (!failed.has(name) && (s < min || s > MAX_DURATION_S)) problems.push(`${name} must be between ${min}s and 3650d, not ${value}`)
    return [field, s]
  })) as unknown as DurationSeconds

  const corsOrigins = parseOrigins(values.CORS_ORIGINS, problems)
  const secretProblem = (name: string, secret: string, minBits: number): void => {
    const weakness = production ? secretWeakness(secret, minBits) : undefined
    if (weakness !== undefined) problems.push(`${name} ${weakness} in production: ${MAKE_A_SECRET}`)
  }
  if (values.METRICS_TOKEN !== undefined) {
    if (values.METRICS_TOKEN.length < 16) problems.push('METRICS_TOKEN must be at least 16 characters')
    else secretProblem('METRICS_TOKEN', values.METRICS_TOKEN, SECRET_BITS.token)
  }
  const introspectionClients = new Map<string, string>()
  for (const pair of values.INTROSPECTION_CLIENTS.split(',').map((p) => p.trim()).filter(Boolean)) {
    const [id, secret] = [pair.slice(0, pair.indexOf(':')), pair.slice(pair.indexOf(':') + 1)]
    if (!pair.includes(':') || id === '' || secret.length < 16 || introspectionClients.has(id)) {
      problems.push('INTROSPECTION_CLIENTS must be id:secret pairs separated by commas, each id once, each secret at least 16 characters')
      break
    }
    secretProblem(`INTROSPECTION_CLIENTS: the secret of ${id}`, secret, SECRET_BITS.token)
    introspectionClients.set(id, secret)
  }
  const roles = new Set(values.ROLES.split(',').map((role) => role.trim()).filter(Boolean))
  for (const role of roles) {
    if (!ROLE.test(role)) {
      problems.push(`ROLES must be names of 1 to 32 lower-case letters, digits, '_', '-', '.' or ':', starting with a letter, separated by commas, not ${JSON.stringify(role)}`)
      break
    }
  }
  if (roles.size > 64) problems.push('ROLES holds at most 64 roles')
  if (values.COOKIE_SAMESITE === 'none' && !values.COOKIE_SECURE) problems.push('COOKIE_SAMESITE=none requires COOKIE_SECURE=true')

  // DATABASE_URL means PostgreSQL; naming PGlite beside it is a mistake to say, not to guess.
  const engine = values.DB_ENGINE ?? (values.DATABASE_URL === undefined ? 'pglite' : 'postgres')
  if (engine === 'postgres' && values.DATABASE_URL === undefined) problems.push('DATABASE_URL is required when DB_ENGINE=postgres')
  if (engine === 'pglite' && values.DATABASE_URL !== undefined) problems.push('DATABASE_URL is set but DB_ENGINE=pglite: unset DB_ENGINE to run on the PostgreSQL of DATABASE_URL, or unset DATABASE_URL')
  if (engine === 'pglite' && values.DATABASE_LISTEN_URL !== undefined) problems.push('DATABASE_LISTEN_URL is for PostgreSQL: set DATABASE_URL too')

  if (values.SECRET_KEY !== undefined) {
    if (values.SECRET_KEY.length < MIN_SECRET_LENGTH) problems.push(`SECRET_KEY must be at least ${MIN_SECRET_LENGTH} characters: ${MAKE_A_SECRET}`)
    else secretProblem('SECRET_KEY', values.SECRET_KEY, SECRET_BITS.key)
  } else if (production) {
    problems.push(`SECRET_KEY is required when NODE_ENV=production: ${MAKE_A_SECRET}`)
  } else if (engine === 'postgres' && values.DATABASE_URL !== undefined) {
    // A development key is generated into the data folder, which on PGlite holds the database it
    // seals. On PostgreSQL it would part from it: deleting ./data to start over would leave a
    // database whose signing keys and queued mail no key opens. The database never holds its own
    // key (a dump alone must not open the private keys), so the key is the operator's to keep.
    problems.push(`SECRET_KEY is required on PostgreSQL (DATABASE_URL), in development too: the signing keys in the database are sealed with it, and a key generated into ./data would part from the database it seals: ${MAKE_A_SECRET}, and keep it with the database`)
  }
  // Without it, a discovery document would name whatever host a request says it came to.
  if (production && values.PUBLIC_URL === undefined) problems.push('PUBLIC_URL is required when NODE_ENV=production: the URL clients reach authgate at, like https://auth.example.com')
  // In production a feature that sends mail needs a server to send it to.
  if (production && values.APP_RESET_URL !== undefined && values.SMTP_URL === undefined) problems.push('APP_RESET_URL needs SMTP_URL when NODE_ENV=production: the password reset sends its link by mail')
  if (values.EMAIL_VERIFICATION !== 'off' && values.APP_VERIFY_URL === undefined) problems.push(`EMAIL_VERIFICATION=${values.EMAIL_VERIFICATION} needs APP_VERIFY_URL: the page its mail's link opens`)
  if (production && values.EMAIL_VERIFICATION !== 'off' && values.SMTP_URL === undefined) problems.push(`EMAIL_VERIFICATION=${values.EMAIL_VERIFICATION} needs SMTP_URL when NODE_ENV=production`)
  if (production && values.EMAIL_SIGN_IN && values.SMTP_URL === undefined) problems.push('EMAIL_SIGN_IN=true needs SMTP_URL when NODE_ENV=production')
  if (values.JWT_PRIVATE_KEY !== undefined && values.JWT_PRIVATE_KEY_FILE !== undefined) problems.push('set JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE, not both')
  if (values.JWT_PRIVATE_KEY !== undefined) {
    const alg = algorithmOfPem(values.JWT_PRIVATE_KEY)
    if (typeof alg !== 'string' || alg !== values.JWT_ALGORITHM) {
      problems.push(`JWT_PRIVATE_KEY must be a PEM private key for JWT_ALGORITHM=${values.JWT_ALGORITHM}: ${typeof alg === 'string' ? `it is one for ${alg}` : alg.why}`)
    }
  }
  const upstreamProviders = parseProviders(env, problems)
  const returnUrls = parseReturnUrls(values.OIDC_RETURN_URLS, problems)
  const passkeyOrigins = parsePasskeyOrigins(values.WEBAUTHN_RP_ID, values.WEBAUTHN_ORIGINS, problems)
  let trustProxy: TrustProxy = false
  try {
    trustProxy = parseTrustProxy(values.TRUST_PROXY)
  } catch (error) {
    problems.push((error as Error).message)
  }
  if (problems.length > 0) throw new ConfigError(problems.join('; '))

  const publicUrl = values.PUBLIC_URL?.replace(/\/+$/, '')
  const secure = values.COOKIE_SECURE
  const hostOnly = secure && values.COOKIE_DOMAIN === undefined
  const docs = values.DOCS_ENABLED ?? !production
  return Object.freeze({
    ...values,
    ...seconds,
    DB_ENGINE: engine,
    JWT_ISSUER: values.JWT_ISSUER ?? publicUrl ?? `http://localhost:${values.PORT}`,
    DOCS_ENABLED: docs,
    MAIL_FROM: values.MAIL_FROM ?? `authgate <no-reply@${new URL(publicUrl ?? 'http://localhost').hostname}>`,
    logLevel: values.LOG_LEVEL ?? (values.DEBUG ? 'debug' : 'info'),
    trustProxy,
    publicUrl,
    corsOrigins: Object.freeze(corsOrigins),
    introspectionClients,
    roles,
    adminAudience: `${publicUrl ?? `http://localhost:${values.PORT}`}/api/admin`,
    // The refresh cookie has its own path, so it can take __Secure- only; the binding cookie,
    // which ties it to this host (plugins/cookies.ts), is always host-only with Path=/.
    cookieNames: Object.freeze({
      access: `${hostOnly ? '__Host-' : secure ? '__Secure-' : ''}access_token`,
      refresh: `${secure ? '__Secure-' : ''}refresh_token`,
      binding: `${secure ? '__Host-' : ''}refresh_binding`,
      // An upstream sign-in's flow secret: this host's alone, like the binding.
      flow: `${secure ? '__Host-' : ''}upstream_flow`
    }),
    features: Object.freeze({
      passwordReset: values.APP_RESET_URL !== undefined,
      emailVerification: values.EMAIL_VERIFICATION !== 'off',
      emailSignIn: values.EMAIL_SIGN_IN,
      metrics: values.METRICS_TOKEN !== undefined,
      docs,
      upstream: upstreamProviders.length > 0,
      passkeys: values.WEBAUTHN_RP_ID !== undefined
    }),
    upstreamProviders: Object.freeze(upstreamProviders),
    returnUrls: new Set(returnUrls),
    passkeyOrigins: Object.freeze(passkeyOrigins)
  })
}

/**
 * The JWS algorithm a PEM private key signs with: ES256 (P-256), EdDSA (Ed25519) or RS256
 * (RSA of 2048 bits or more); or why it cannot be used.
 */
export function algorithmOfPem (pem: string): Algorithm | { why: string } {
  let key
  try {
    key = createPrivateKey(pem)
  } catch {
    return { why: 'it is not a PEM private key' }
  }
  const details = key.asymmetricKeyDetails ?? {}
  if (key.asymmetricKeyType === 'ec' && details.namedCurve === 'prime256v1') return 'ES256'
  if (key.asymmetricKeyType === 'ed25519') return 'EdDSA'
  if (key.asymmetricKeyType === 'rsa' && (details.modulusLength ?? 0) >= 2048) return 'RS256'
  return { why: `a ${key.asymmetricKeyType ?? 'symmetric'} key${details.namedCurve === undefined ? '' : ` on ${details.namedCurve}`} is not one authgate signs with (P-256, Ed25519, RSA of 2048 bits or more)` }
}

/** The folder authgate keeps local state in: PGlite's data, the development secret (PostgreSQL needs SECRET_KEY: parseConfig). */
function dataFolder (config: Pick<ParsedConfig, 'DB_ENGINE' | 'DB_NAME'>): string | undefined {
  if (config.DB_ENGINE === 'pglite' && config.DB_NAME.startsWith('memory://')) return undefined
  return config.DB_ENGINE === 'pglite' ? config.DB_NAME : './data'
}

/**
 * Creates the data folder, readable by its owner only, with a .gitignore that keeps it out of
 * any repository it is made in.
 */
export async function ensureDataFolder (folder: string): Promise<void> {
  await mkdir(folder, { recursive: true, mode: 0o700 })
  // An existing folder keeps its mode through mkdir: PGlite writes its files 0666.
  await chmod(folder, 0o700)
  await writeFile(join(folder, '.gitignore'), '*\n', { flag: 'wx' }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'EEXIST') throw error
  })
}

// In development a missing SECRET_KEY is generated once into the data folder, so tokens and
// encrypted keys survive restarts. Written to a temporary file, then linked into place: a
// second process starting at once reads the whole secret or makes none, never an empty one.
async function developmentSecret (folder: string): Promise<{ secret: string, created: boolean }> {
  const file = join(folder, 'secret_key')
  const read = async (): Promise<string> => {
    const secret = (await readFile(file, 'utf8')).trim()
    if (secret.length < MIN_SECRET_LENGTH) {
      throw new ConfigError(`${file} holds a secret of ${secret.length} characters; at least ${MIN_SECRET_LENGTH} are needed: delete the file to generate one, or set SECRET_KEY`)
    }
    return secret
  }
  try {
    return { secret: await read(), created: false }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
  }
  await ensureDataFolder(folder)
  const secret = randomBytes(48).toString('base64url')
  const temporary = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`
  await writeFile(temporary, secret + '\n', { mode: 0o600, flag: 'wx' })
  try {
    await link(temporary, file)
    return { secret, created: true }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    return { secret: await read(), created: false }
  } finally {
    await rm(temporary, { force: true })
  }
}

/**
 * The configuration the service runs with: parsed, and with a development SECRET_KEY made or
 * read when none is set. `warn` receives what an operator should know.
 */
export async function loadConfig (env: Record<string, string | undefined>, warn: (message: string) => void = () => {}): Promise<Config> {
  const keyFile = env.JWT_PRIVATE_KEY_FILE
  if (keyFile !== undefined && keyFile !== '' && env.JWT_PRIVATE_KEY === undefined) {
    // A mounted secret: read here, then judged like JWT_PRIVATE_KEY itself.
    const pem = await readFile(keyFile, 'utf8').catch((error: NodeJS.ErrnoException) => {
      throw new ConfigError(`JWT_PRIVATE_KEY_FILE ${keyFile} cannot be read: ${error.code ?? error.message}`)
    })
    return await loadConfig({ ...env, JWT_PRIVATE_KEY: pem, JWT_PRIVATE_KEY_FILE: undefined }, warn)
  }
  const config = parseConfig(env)
  // Native apps' ID tokens need no page to return to; a browser's sign-in does.
  if (config.features.upstream && config.returnUrls.size === 0) warn('OIDC_PROVIDERS is set but OIDC_RETURN_URLS is empty: every browser sign-in with a provider is refused (400 return_to_not_allowed); only the id-token endpoint of native apps works')
  if (config.SECRET_KEY !== undefined) return config as Config
  const folder = dataFolder(config)
  if (folder === undefined) {
    warn('SECRET_KEY is not set: using a random one for this in-memory run')
    return Object.freeze({ ...config, SECRET_KEY: randomBytes(48).toString('base64url') })
  }
  const { secret, created } = await developmentSecret(folder)
  if (created) warn(`SECRET_KEY is not set: generated one into ${join(folder, 'secret_key')} (development only)`)
  return Object.freeze({ ...config, SECRET_KEY: secret })
}

/** The process environment over a .env file of the working directory, as env-schema's dotenv reads it. */
export function processEnv (): Record<string, string | undefined> {
  let fromFile: Record<string, string> = {}
  try {
    fromFile = parseEnv(readFileSync('.env', 'utf8')) as Record<string, string>
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
  }
  return { ...fromFile, ...process.env }
}
