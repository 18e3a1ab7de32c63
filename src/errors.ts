import createError from '@fastify/error'

// Every domain error, made once (https://github.com/fastify/fastify-error). The code, lower
// cased (@fastify/error upper-cases it), is the stable `code` of the problem+json body; the
// message is its `detail`.

const domainErrors: Array<ReturnType<typeof createError>> = []
function define (code: string, message: string, status: number): ReturnType<typeof createError> {
  const DomainError = createError(code, message, status)
  domainErrors.push(DomainError)
  return DomainError
}

/** An error made here: its code and message are meant for the client. */
export function isDomainError (error: unknown): error is Error & { code: string, statusCode: number } {
  return domainErrors.some((DomainError) => error instanceof DomainError)
}

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

export const InvalidCredentialsError = define('invalid_credentials', 'No active account found with the given credentials', 401)
export const NotAuthenticatedError = define('not_authenticated', 'Authentication credentials were not provided.', 401)
export const TokenNotValidError = define('token_not_valid', 'Token is invalid or expired', 401)
export const TokenExpiredError = define('token_expired', 'Token is expired', 401)
export const InvalidClientError = define('invalid_client', 'Client authentication failed.', 401)
export const NotFoundError = define('not_found', 'Not found.', 404)
export const UsernameTakenError = define('username_taken', 'A user with that username already exists.', 409)
export const EmailTakenError = define('email_taken', 'A user with that email already exists.', 409)
export const UnsupportedMediaTypeError = define('unsupported_media_type', 'Request bodies must be application/json.', 415)
// From a service that is going away: the request belongs on another replica.
export const ShuttingDownError = define('service_unavailable', 'The service is shutting down; try again shortly.', 503)
export const DatabaseUnavailableError = define('service_unavailable', 'The database is unavailable; try again shortly.', 503)
export const BadRequestError = define('bad_request', '%s', 400)
export const RateLimitedError = define('rate_limited', 'Too many requests; try again in %d seconds.', 429)
