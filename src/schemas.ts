import { Type, type Static } from '@sinclair/typebox'

// Shared schema atoms; route-specific shapes stay in their route.

/** Letters, digits and . + - _ (no @: an identifier with @ is always an email), NFKC-normalised by the service. */
export const UsernameSchema = Type.String({ minLength: 1, maxLength: 150, pattern: '^[\\p{L}\\p{N}.+_-]+$' })
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

/** OpenAPI security of the routes an access token opens: the Bearer header, else the access cookie. */
export const AccessTokenSecurity = [{ bearer: [] }, { cookie: [] }]

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

/** RFC 9457 problem details, with simplejwt's `detail` and `code`. */
export const ProblemSchema = Type.Object({
  type: Type.String(),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.String(),
  code: Type.String(),
  errors: Type.Optional(Type.Array(Type.Object({ field: Type.String(), message: Type.String() })))
})

/** Response schemas for the error statuses a route can answer; any route can answer 500. */
export function problems (...statuses: number[]): Record<number, typeof ProblemSchema> {
  return Object.fromEntries([...statuses, 500].map((status) => [status, ProblemSchema]))
}
