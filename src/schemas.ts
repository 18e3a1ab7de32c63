import { Type, type Static } from '@sinclair/typebox'
import { USERNAME_PATTERN } from './lib/usernames.ts'

// Shared schema atoms; route-specific shapes stay in their route.

/** Letters, digits and . + - _ (no @: an identifier with @ is always an email), NFKC-normalised by the service. */
export const UsernameSchema = Type.String({ minLength: 1, maxLength: 150, pattern: USERNAME_PATTERN })
export const EmailSchema = Type.String({ format: 'email', minLength: 3, maxLength: 254 })
// Refuses NUL (bcrypt stops reading at it; PostgreSQL text cannot hold it) and lone UTF-16
// surrogates (they would all encode as U+FFFD: two different passwords would be one). Ajv
// compiles patterns with the u flag, so a surrogate pair is one code point and passes.
const WELL_FORMED_TEXT = '^[^\\u0000\\uD800-\\uDFFF]+$'

// The byte limit (72, bcrypt's) is checked by the password policy; this bounds the work first.
export const PasswordSchema = Type.String({ minLength: 1, maxLength: 256, pattern: WELL_FORMED_TEXT })
/** A username, or an email (it contains @). */
export const IdentifierSchema = Type.String({ minLength: 1, maxLength: 254, pattern: WELL_FORMED_TEXT })
/**
 * A token, bounded by the body limit alone: any string that is not a valid token is refused
 * with 401 token_not_valid, as simplejwt does, whatever its length.
 */
export const TokenSchema = Type.String({ minLength: 1 })

// OpenAPI security requirements; plugins/docs.ts declares the schemes they name.
type SecurityRequirements = Array<Record<string, string[]>>
/** The routes an access token opens: the Bearer header, else the access cookie. */
export const AccessTokenSecurity: SecurityRequirements = [{ bearer: [] }, { cookie: [] }]
/** An admin route: a service token for the admin API holding `scope` (plugins/docs.ts: the adminClient scheme). */
export const adminSecurity = (scope: string): SecurityRequirements => [{ adminClient: [scope] }]
/** Refresh and blacklist: the refresh cookie, or (the empty requirement) the token in the body. */
export const RefreshTokenSecurity: SecurityRequirements = [{ refreshCookie: [] }, {}]
/**
 * The OAuth endpoints: a client's credentials by HTTP Basic (client_secret_basic), or (the empty
 * requirement) in the body: client_secret_post, private_key_jwt.
 */
export const ClientSecurity: SecurityRequirements = [{ basic: [] }, {}]

/** A client's credentials in an OAuth request body (RFC 6749 §2.3.1, RFC 7523 §2.2). */
export const ClientParametersSchema = Type.Object({
  client_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  client_secret: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  client_assertion: Type.Optional(Type.String({ minLength: 1, maxLength: 8192 })),
  client_assertion_type: Type.Optional(Type.String({ maxLength: 256 }))
})

/** A refresh token in the body, else the refresh cookie is taken: refresh and blacklist. */
export const RefreshTokenBodySchema = Type.Object({
  refresh: Type.Optional(TokenSchema)
}, { additionalProperties: false })

/** A public JWK as the JWKS publishes it (RFC 7517 §4, RFC 7518 §6). */
export const JwkSchema = Type.Object({
  kty: Type.String(),
  kid: Type.String(),
  alg: Type.String(),
  use: Type.Literal('sig'),
  crv: Type.Optional(Type.String()),
  x: Type.Optional(Type.String()),
  y: Type.Optional(Type.String()),
  n: Type.Optional(Type.String()),
  e: Type.Optional(Type.String())
})
export type Jwk = Static<typeof JwkSchema>

/** A mail's link token, as the front end reads it from the link's fragment (#token=…), and a mail's code. */
export const MailTokenSchema = Type.String({ pattern: '^[A-Za-z0-9_-]{43}$', description: 'the token of the mail\'s link, from its fragment (#token=…)' })
export const MailCodeSchema = Type.String({ pattern: '^[0-9]{6}$', description: 'the 6-digit code of the mail' })
/** What proves a mailed secret (a reset, a verification): the token of the mail's link, or the address and the mail's code. */
export const MailedLinkSchema = Type.Object({ token: MailTokenSchema }, { additionalProperties: false })
export const MailedCodeSchema = Type.Object({ email: EmailSchema, code: MailCodeSchema }, { additionalProperties: false })
export const MailedProofSchema = Type.Union([MailedLinkSchema, MailedCodeSchema])
export type MailedProof = Static<typeof MailedProofSchema>
/** The fields of a body that takes a mailed proof beside others: each optional, the route says which go together. */
export const MailedProofFieldsSchema = Type.Partial(Type.Composite([MailedLinkSchema, MailedCodeSchema]))

/** The `:id` of a session or a second factor: a UUID, the hyphenated form only (ajv's uuid format also takes urn:uuid:…, which PostgreSQL does not). */
export const UuidParamsSchema = Type.Object({ id: Type.String({ pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' }) })
/** The `:provider` of an upstream sign-in: a name of OIDC_PROVIDERS. */
export const ProviderParamsSchema = Type.Object({ provider: Type.String({ pattern: '^[a-z][a-z0-9]{0,31}$' }) })
/** An identity of an upstream provider linked to a user, as the user and operators see it. */
export const IdentitySchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  provider: Type.String(),
  subject: Type.String({ description: 'The provider\'s id of the person: with its issuer, the identity' }),
  email: Type.Union([Type.String(), Type.Null()], { description: 'The address its last sign-in named: shown, never matched on' }),
  created_at: Type.String({ format: 'date-time', description: 'When it was linked' }),
  last_used_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()])
})
/** A passkey as its user and operators see it. */
export const PasskeySchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  name: Type.String(),
  device_type: Type.Union([Type.Literal('singleDevice'), Type.Literal('multiDevice')], { description: 'multiDevice: a synced passkey (a password manager\'s, a platform account\'s)' }),
  backed_up: Type.Boolean(),
  aaguid: Type.String({ description: 'The id of the authenticator\'s model (AAGUID); zeros when it does not say' }),
  transports: Type.Array(Type.String()),
  created_at: Type.String({ format: 'date-time' }),
  last_used_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()])
})
/** A passkey row, its times as the API writes them. */
export const passkeyOut = <T extends { created_at: Date, last_used_at: Date | null }>(passkey: T) =>
  ({ ...passkey, created_at: passkey.created_at.toISOString(), last_used_at: passkey.last_used_at?.toISOString() ?? null })
/** A passkey's name, as its user gives it. */
export const PasskeyNameSchema = Type.String({ minLength: 1, maxLength: 64, pattern: WELL_FORMED_TEXT })
const Base64Url = (maxLength: number) => Type.String({ minLength: 1, maxLength, pattern: '^[A-Za-z0-9_-]+$' })
// What a browser's WebAuthn answer holds (the JSON of @simplewebauthn/browser, or of
// PublicKeyCredential.toJSON()); @simplewebauthn/server judges the rest.
const credentialOf = (response: ReturnType<typeof Type.Object>, description: string) => Type.Object({
  id: Base64Url(1364),
  rawId: Base64Url(1364),
  type: Type.Literal('public-key'),
  response,
  clientExtensionResults: Type.Object({}),
  authenticatorAttachment: Type.Optional(Type.Union([Type.Literal('platform'), Type.Literal('cross-platform')]))
}, { description })
export const RegistrationCredentialSchema = credentialOf(Type.Object({
  clientDataJSON: Base64Url(4096),
  attestationObject: Base64Url(12_000),
  transports: Type.Optional(Type.Array(Type.String({ maxLength: 32 }), { maxItems: 10 }))
}), 'the answer of navigator.credentials.create() (startRegistration of @simplewebauthn/browser)')
export const AuthenticationCredentialSchema = credentialOf(Type.Object({
  clientDataJSON: Base64Url(4096),
  authenticatorData: Base64Url(4096),
  signature: Base64Url(1024),
  userHandle: Type.Optional(Base64Url(128))
}), 'the answer of navigator.credentials.get() (startAuthentication of @simplewebauthn/browser)')
/** The id of a ceremony's challenge, to send back with the browser's answer. */
export const ChallengeIdSchema = Type.String({ pattern: '^[A-Za-z0-9_-]{43}$', description: 'the challenge\'s id: 5 minutes, once' })
/** An answer, or a body, with nothing in it. */
export const EmptySchema = Type.Object({}, { additionalProperties: false })
/** Recovery codes as they are handed out, once. */
export const RecoveryCodesSchema = Type.Array(Type.String(), { description: 'shown once: keep them somewhere safe' })
/** The admin API's `:id` of a user: a positive integer, written as one. */
export const UserIdParamsSchema = Type.Object({ id: Type.String({ pattern: '^[1-9][0-9]{0,9}$' }) })
/** Why an operator makes a change: kept in the audit trail. */
export const ReasonSchema = Type.String({ minLength: 1, maxLength: 500, pattern: WELL_FORMED_TEXT })
/** The reason of an operator's DELETE, in its query (a DELETE has no body). */
export const ReasonQuerySchema = Type.Object({ reason: ReasonSchema }, { additionalProperties: false })
/** A keyset page's size and where it starts: the `next_cursor` of the page before. */
export const PageQuerySchema = Type.Object({
  cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  limit: Type.Optional(Type.String({ pattern: '^(100|[1-9][0-9]?)$', description: '1 to 100; 50 when absent' }))
})

export const UserSchema = Type.Object({
  id: Type.Integer(),
  username: Type.String(),
  email: Type.String()
})
export type User = Static<typeof UserSchema>

export const TokenPairSchema = Type.Object({
  refresh: Type.String(),
  access: Type.String()
})
export type TokenPair = Static<typeof TokenPairSchema>

/** How a second step is proven (POST /api/auth/mfa/verify). */
export const MfaMethodSchema = Type.Union([Type.Literal('totp'), Type.Literal('recovery_code')])
/** A TOTP code, or a recovery code as it was shown (dashes and spaces ignored, any case). */
export const MfaCodeSchema = Type.String({ minLength: 6, maxLength: 32, pattern: '^[0-9A-Fa-f -]+$', description: 'a TOTP code, or a recovery code' })

/** A first factor passed by a user with a second factor: no pair yet; POST /api/auth/mfa/verify with the mfa_token. */
export const MfaRequiredSchema = Type.Object({
  mfa_required: Type.Literal(true),
  mfa_token: Type.String({ description: 'for POST /api/auth/mfa/verify, or /api/auth/passkeys/authentication/verify: 5 minutes, 5 tries' }),
  methods: Type.Array(Type.Union([Type.Literal('totp'), Type.Literal('passkey'), Type.Literal('recovery_code')]))
})

/** A sign-in's answer: the pair, or the second step it needs. */
export const SignInAnswerSchema = Type.Union([TokenPairSchema, MfaRequiredSchema])

/** RFC 9457 problem details, with simplejwt's `detail` and `code`. */
export const ProblemSchema = Type.Object({
  type: Type.String(),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.String(),
  code: Type.String(),
  errors: Type.Optional(Type.Array(Type.Object({ field: Type.String(), message: Type.String() })))
})

/** RFC 6749 §5.2: what an OAuth endpoint answers an error with (plugins/errors.ts). */
export const OAuthErrorSchema = Type.Object({
  error: Type.String(),
  error_description: Type.String()
})

/** RFC 9457's media type: every error answer has it (plugins/errors.ts), but an OAuth endpoint's. */
export const PROBLEM_MEDIA_TYPE = 'application/problem+json'

const PROBLEM_DESCRIPTIONS: Readonly<Record<number, string>> = {
  400: 'Bad request: input that fails the schema (each failing field in `errors`), or a malformed request',
  401: 'Not authenticated: credentials or token missing, wrong, expired or revoked; WWW-Authenticate names the scheme',
  403: 'Forbidden: the token or client is proven but lacks a scope (insufficient_scope; WWW-Authenticate says so)',
  404: 'Not found',
  409: 'Conflict: the username or email is taken',
  413: 'The body is larger than the limit (16 KiB)',
  415: 'The body is not application/json',
  429: 'Rate limited: try again after Retry-After seconds',
  500: 'Internal Server Error, logged with the request id',
  503: 'Service unavailable: the database does not answer in time, or the server is shutting down'
}

const PROBLEM_HEADERS: Readonly<Record<number, Record<string, { type: 'string', description: string }>>> = {
  401: { 'www-authenticate': { type: 'string', description: 'RFC 6750 §3 (Bearer) or RFC 7617 (Basic) challenge' } },
  403: { 'www-authenticate': { type: 'string', description: 'RFC 6750 §3.1: Bearer error="insufficient_scope"' } },
  429: { 'retry-after': { type: 'string', description: 'Seconds until the limit resets' } }
}

/**
 * Statuses every route can answer, whatever it does: 400 to an HTTP/1.1 request without Host
 * (plugins/security.ts), 503 once the server is closing or past the handler deadline
 * (plugins/errors.ts, src/app.ts), 500.
 */
const EVERY_ROUTE_STATUSES = [400, 500, 503] as const

/** One error status's response: problem+json (RFC 9457), or RFC 6749's shape, described and with its headers. */
function problemResponse (status: number, oauth: boolean) {
  return {
    description: PROBLEM_DESCRIPTIONS[status] ?? 'Error',
    ...(PROBLEM_HEADERS[status] === undefined ? {} : { headers: PROBLEM_HEADERS[status] }),
    content: oauth ? { 'application/json': { schema: OAuthErrorSchema } } : { [PROBLEM_MEDIA_TYPE]: { schema: ProblemSchema } }
  }
}

function responses (oauth: boolean, statuses: number[]): Record<number, ReturnType<typeof problemResponse>> {
  const all = [...new Set([...statuses, ...EVERY_ROUTE_STATUSES])].sort((a, b) => a - b)
  return Object.fromEntries(all.map((status) => [status, problemResponse(status, oauth)]))
}

/** Response schemas for the error statuses a route answers, beside those every route can. */
export function problems (...statuses: number[]): Record<number, ReturnType<typeof problemResponse>> {
  return responses(false, statuses)
}

/** The same for an OAuth endpoint (route config `oauth`): RFC 6749 §5.2 errors. */
export function oauthProblems (...statuses: number[]): Record<number, ReturnType<typeof problemResponse>> {
  return responses(true, statuses)
}
