import createError from '@fastify/error'

// Every error a client can be told, made once (https://github.com/fastify/fastify-error): the
// code, lower cased (@fastify/error upper-cases it), is the stable `code` of the problem+json
// body, forever; the message is its `detail`. An OAuth endpoint answers the same errors in RFC
// 6749's shape (src/problems.ts).

type DomainErrorClass = ReturnType<typeof createError>
const domainErrors: DomainErrorClass[] = []
function define (code: string, message: string, status: number): DomainErrorClass {
  const DomainError = createError(code, message, status)
  domainErrors.push(DomainError)
  return DomainError
}

/** An error made here: its code and message are meant for the client. */
export function isDomainError (error: unknown): error is Error & { code: string, statusCode: number } {
  return domainErrors.some((DomainError) => error instanceof DomainError)
}

/** The code of an error made here as clients read it: lower case (@fastify/error upper-cases what it is given). */
export const clientCode = (error: { code: string }): string => error.code.toLowerCase()

export interface FieldError { field: string, message: string }

const ValidationFailedBase = define('validation_failed', 'Invalid input.', 400)
/** 400 with the list of failing fields. */
export class ValidationFailedError extends ValidationFailedBase {
  readonly errors: FieldError[]
  constructor (errors: FieldError[]) {
    super()
    this.errors = errors
  }
}

// 400: a request that is malformed, before any route judges it.
export const BadRequestError = define('bad_request', '%s', 400)
/** Any other 4xx of Fastify's or Node's, named by its status (its own message is not shown). */
export const ClientError = define('client_error', '%s', 400)
export const InvalidJsonError = define('invalid_json', '%s', 400)
export const InvalidValueError = define('bad_request', 'A value in the request is not valid.', 400)
export const ResetTokenInvalidError = define('reset_token_invalid', 'The reset link or code is wrong, used or expired: ask for a new one.', 400)
export const VerificationTokenInvalidError = define('verification_token_invalid', 'The verification link or code is wrong, used or expired: ask for a new one.', 400)
export const SignInCodeInvalidError = define('sign_in_code_invalid', 'The sign-in code is wrong, used or expired: ask for a new one.', 400)
export const MfaCodeInvalidError = define('mfa_code_invalid', 'The code is wrong.', 400)
export const MfaCodeUsedError = define('mfa_code_used', 'The code was used already: wait for the next one of the app, or use another recovery code.', 400)
export const MfaRequiredError = define('mfa_required', 'The account has a second factor: give mfa_method and mfa_code too.', 400)
export const InvalidCursorError = define('invalid_cursor', 'The cursor is not one this list gave.', 400)
export const ReturnUrlNotAllowedError = define('return_to_not_allowed', 'return_to is not one of the pages OIDC_RETURN_URLS lists (compared whole).', 400)
export const PasskeyChallengeInvalidError = define('passkey_challenge_invalid', 'The challenge_id is wrong, used or expired: ask for new options.', 400)
export const FlowInvalidError = define('flow_invalid', 'This sign-in was not started in this browser, was finished already, or has expired: start it again.', 400)

// 401: who is asking is not proven.
export const InvalidCredentialsError = define('invalid_credentials', 'No active account found with the given credentials', 401)
export const NotAuthenticatedError = define('not_authenticated', 'Authentication credentials were not provided.', 401)
export const TokenNotValidError = define('token_not_valid', 'Token is invalid or expired', 401)
export const TokenExpiredError = define('token_expired', 'Token is expired', 401)
// Says why (RFC 6749 §5.2's error_description), never whether a client id exists to who has not proven it.
export const InvalidClientError = define('invalid_client', 'Client authentication failed: %s', 401)
export const IdTokenInvalidError = define('id_token_invalid', 'The ID token is not valid: %s.', 401)
// Says what failed of the passkey's answer (an origin not allowed, no user verification), never which account it is of.
export const PasskeyInvalidError = define('passkey_invalid', 'The passkey could not be verified: %s.', 401)
// Its own code, so that a front end can tell the authenticator to stop offering it (the WebAuthn signal API's signalUnknownCredential).
export const PasskeyUnknownError = define('passkey_unknown', 'No account has this passkey: it was removed, or made for another service.', 401)
export const SessionEndedError = define('session_ended', 'The session that started linking has ended: sign in and link again.', 401)
export const MfaTokenInvalidError = define('mfa_token_invalid', 'The mfa_token is wrong, used, expired or out of tries: sign in again.', 401)
export const WrongAudienceError = define('token_not_valid', 'The token is not for this audience.', 401)
export const AudienceRequiredError = define('token_not_valid', 'A service token is accepted only for an audience the gateway names (?audience=).', 401)

// 403: who is asking is proven, and may not.
export const EmailNotVerifiedError = define('email_not_verified', 'Verify your email address first: POST /api/auth/email/verification sends a new mail.', 403)
export const Aal2RequiredError = define('aal2_required', 'This needs a session signed in with a second factor or a passkey (aal2): POST /api/auth/mfa/verify steps the session up by a code, or sign in with a passkey.', 403)
export const RecentSignInRequiredError = define('reauthentication_required', 'This needs a sign-in within the last 10 minutes: sign in again, or step up with POST /api/auth/mfa/verify.', 403)
export const MfaLockedError = define('mfa_locked', 'Ten wrong codes in a row: the second step is locked for 15 minutes.', 403)
export const UpstreamDeniedError = define('access_denied', 'The identity provider did not sign you in (%s).', 403)
export const UpstreamNotAllowedError = define('not_allowed', '%s', 403)
export const EmailRequiredError = define('email_required', 'The identity provider gave no address to make an account with: allow authgate to read your verified address there, or register first and link the provider.', 403)
export const InsufficientScopeError = define('insufficient_scope', 'The token lacks the scope %s.', 403)

export const NotFoundError = define('not_found', 'Not found.', 404)
export const ProviderNotFoundError = define('not_found', 'No identity provider %s.', 404)
export const IdentityNotFoundError = define('not_found', 'No linked identity %s.', 404)
export const PasskeyNotFoundError = define('not_found', 'No passkey %s.', 404)
export const ClientNotFoundError = define('not_found', 'No client %s.', 404)
export const UserNotFoundError = define('not_found', 'No user %s.', 404)
export const RouteNotFoundError = define('not_found', 'No route for %s %s.', 404)
/** A route of a feature that is off: the detail names the setting that turns it on. */
export const FeatureOffError = define('not_found', 'No route for %s %s: %s is off; %s turns it on.', 404)
export const MethodNotAllowedError = define('method_not_allowed', '%s', 405)
export const RequestTimeoutError = define('request_timeout', 'The request was not received in time.', 408)
export const UsernameTakenError = define('username_taken', 'A user with that username already exists.', 409)
export const EmailTakenError = define('email_taken', 'A user with that email already exists.', 409)
export const UserDeletedError = define('user_deleted', 'The user was deleted.', 409)
export const UserDisabledError = define('user_disabled', 'The user is disabled: enable them first.', 409)
export const AccountExistsError = define('account_exists', 'An account already has this address: sign in as you did before, then link this provider from it (POST /api/auth/identities/link).', 409)
export const IdentityTakenError = define('identity_taken', 'This account of the identity provider is linked to another user.', 409)
export const LastWayInError = define('last_way_in', 'This is the last way into the account: set a password, link another provider or add another passkey first.', 409)
export const PasskeyExistsError = define('passkey_exists', 'This passkey is registered already.', 409)
export const MailLimitReachedError = define('mail_limit_reached', 'The user was sent this mail less than a minute ago, or five times in the last hour: try again later.', 409)
export const PayloadTooLargeError = define('payload_too_large', 'The request body is too large.', 413)
export const UnsupportedMediaTypeError = define('unsupported_media_type', '%s', 415)
export const ExpectationFailedError = define('expectation_failed', 'Only Expect: 100-continue is supported.', 417)
export const RateLimitedError = define('rate_limited', 'Too many requests; try again in %d seconds.', 429)
export const HeadersTooLargeError = define('headers_too_large', 'The request headers are too large.', 431)

export const InternalError = define('internal_error', 'Internal Server Error', 500)
// The identity provider answered what no provider may (a token request refused, an answer not
// valid): nothing the client can mend, and not authgate's fault.
export const UpstreamFailedError = define('upstream_error', 'The identity provider\'s answer was not valid: %s.', 502)
// From a service that is going away: the request belongs on another replica.
export const ShuttingDownError = define('service_unavailable', 'The service is shutting down; try again shortly.', 503)
export const DatabaseUnavailableError = define('service_unavailable', 'The database is unavailable; try again shortly.', 503)
export const UpstreamUnavailableError = define('upstream_unavailable', 'The identity provider could not be reached: %s.', 503)
export const TooSlowError = define('service_unavailable', 'The request took too long; try again shortly.', 503)

// The OAuth endpoints' own (RFC 6749 §5.2, RFC 8707 §2, RFC 7009 §2.2.1): their codes are
// the `error` their clients read.
export const InvalidRequestError = define('invalid_request', '%s', 400)
export const InvalidGrantError = define('invalid_grant', 'The refresh token is invalid, expired or revoked.', 400)
// RFC 7523 §3.1: an assertion (a JWT bearer grant) that is not taken.
export const AssertionInvalidError = define('invalid_grant', 'The assertion is not taken: %s', 400)
export const InvalidScopeError = define('invalid_scope', '%s', 400)
export const InvalidTargetError = define('invalid_target', '%s', 400)
export const UnauthorizedClientError = define('unauthorized_client', '%s', 400)
export const UnsupportedGrantTypeError = define('unsupported_grant_type', 'The grant_type is not one authgate issues tokens for: client_credentials, refresh_token, urn:ietf:params:oauth:grant-type:token-exchange, urn:ietf:params:oauth:grant-type:jwt-bearer.', 400)
export const UnsupportedTokenTypeError = define('unsupported_token_type', 'A service token is one signature, which nothing revokes: disable its client (npm run clients -- disable) to stop its tokens.', 400)

/** The message of an UnsupportedMediaTypeError for a body that is not JSON. */
export const JSON_ONLY = 'Request bodies must be application/json.'
/** The same, at a route that takes forms too (the OAuth endpoints). */
export const FORM_OR_JSON = 'Request bodies must be application/x-www-form-urlencoded or application/json.'
