import type { FastifyError } from 'fastify'
import { STATUS_CODES } from 'node:http'
import {
  clientCode,
  BadRequestError, ClientError, InternalError, InvalidJsonError, InvalidValueError, isDomainError, JSON_ONLY,
  PayloadTooLargeError, TooSlowError, UnsupportedMediaTypeError, ValidationFailedError, type FieldError
} from './errors.ts'
import { SECURITY_HEADERS } from './lib/security-headers.ts'

/** One error answer, before it becomes RFC 9457 problem details. */
export interface Problem {
  status: number
  code: string
  detail: string
  errors?: FieldError[]
}

/** At most this many field errors in one answer; the detail says how many there were. */
export const MAX_FIELD_ERRORS = 20

/** A domain error (src/errors.ts) as a problem. */
export function problemOf (error: { code: string, statusCode?: number, message: string }): Problem {
  return { status: error.statusCode ?? 500, code: clientCode(error), detail: error.message }
}

// Fastify's own errors, as the domain errors they are.
const FASTIFY_ERRORS = new Map<string, () => Error & { code: string, statusCode?: number }>(Object.entries({
  FST_ERR_CTP_INVALID_MEDIA_TYPE: () => new UnsupportedMediaTypeError(JSON_ONLY),
  FST_ERR_CTP_BODY_TOO_LARGE: () => new PayloadTooLargeError(),
  FST_ERR_CTP_EMPTY_JSON_BODY: () => new InvalidJsonError('The request body is empty; send a JSON object.'),
  FST_ERR_CTP_INVALID_JSON_BODY: () => new InvalidJsonError('The request body is not valid JSON.'),
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: () => new BadRequestError('Content-Length does not match the body.'),
  FST_ERR_CTP_INVALID_TYPE: () => new UnsupportedMediaTypeError('The Content-Type header is not valid.'),
  FST_ERR_BAD_URL: () => new BadRequestError('The URL is not valid.'),
  FST_ERR_MAX_PARAM_LENGTH: () => new BadRequestError('A URL parameter is too long.'),
  FST_ERR_HANDLER_TIMEOUT: () => new TooSlowError()
}))

function fieldErrors (error: FastifyError): FieldError[] {
  return (error.validation ?? []).map((v) => {
    const params = v.params as { missingProperty?: string, additionalProperty?: string }
    const path = [v.instancePath.split('/').filter(Boolean).join('.'), params.missingProperty ?? params.additionalProperty]
      .filter(Boolean).join('.')
    const message = params.additionalProperty !== undefined ? 'is not allowed' : v.message ?? 'is invalid'
    return { field: path === '' ? (error.validationContext ?? 'body') : path, message }
  })
}

function validationProblem (errors: FieldError[]): Problem {
  const detail = errors.length > MAX_FIELD_ERRORS
    ? `Invalid input: ${errors.length} problems, the first ${MAX_FIELD_ERRORS} listed.`
    : 'Invalid input.'
  return { ...problemOf(new ValidationFailedError(errors)), detail, errors: errors.slice(0, MAX_FIELD_ERRORS) }
}

/** What a client is told of an error: only what was meant for it; 5xx say no more than their name. */
export function toProblem (error: FastifyError): Problem {
  if (error.validation !== undefined) return validationProblem(fieldErrors(error))
  if (error instanceof ValidationFailedError) return validationProblem(error.errors)
  if (isDomainError(error)) return problemOf(error)
  const code = typeof error.code === 'string' ? error.code : ''
  // A data exception (SQLSTATE class 22: a value PostgreSQL cannot take) is the request's fault,
  // whatever let it through: never a 500.
  if (/^22[0-9A-Z]{3}$/.test(code) && typeof (error as { severity?: unknown }).severity === 'string') return problemOf(new InvalidValueError())
  const known = FASTIFY_ERRORS.get(code)
  if (known !== undefined) return problemOf(known())
  const status = error.statusCode ?? 500
  if (status >= 400 && status < 500) {
    // JSON parse errors (including __proto__ keys) and the like: safe to name, not to echo.
    const named = status === 400 ? new BadRequestError('Bad Request') : Object.assign(new ClientError(STATUS_CODES[status] ?? 'Client Error'), { statusCode: status })
    return problemOf(named)
  }
  return problemOf(new InternalError())
}

/** RFC 9457 problem details, with simplejwt's `detail` and `code`. */
export function problemBody (problem: Problem): Record<string, unknown> {
  return { type: 'about:blank', title: STATUS_CODES[problem.status] ?? 'Error', ...problem }
}

/**
 * RFC 6750 §3: a 401 names the scheme; with a token that failed, error="invalid_token"; a 403
 * for a scope the token lacks, error="insufficient_scope" (§3.1).
 */
export function challenge (problem: Problem): string | undefined {
  if (problem.code === 'insufficient_scope') return `Bearer realm="authgate", error="insufficient_scope", error_description="${problem.detail}"`
  if (problem.status !== 401) return undefined
  // RFC 7662 §2.1 and RFC 6749 §5.2: a service authenticates with HTTP Basic.
  if (problem.code === 'invalid_client') return 'Basic realm="authgate"'
  const invalid = problem.code === 'token_not_valid' || problem.code === 'token_expired'
  return `Bearer realm="authgate"${invalid ? `, error="invalid_token", error_description="${problem.detail}"` : ''}`
}

// RFC 6749 §5.2's error codes for the problems of an OAuth endpoint; a code that is one of
// them already (invalid_client, invalid_grant, invalid_scope, ...) stays as it is.
const OAUTH_ERRORS: Readonly<Record<string, string>> = {
  validation_failed: 'invalid_request',
  bad_request: 'invalid_request',
  invalid_json: 'invalid_request',
  unsupported_media_type: 'invalid_request',
  payload_too_large: 'invalid_request',
  not_authenticated: 'invalid_client',
  token_not_valid: 'invalid_grant',
  token_expired: 'invalid_grant',
  rate_limited: 'temporarily_unavailable',
  service_unavailable: 'temporarily_unavailable',
  internal_error: 'server_error'
}

/**
 * A problem as the body OAuth clients read (RFC 6749 §5.2, RFC 7662 §2.3, RFC 7009 §2.2.1):
 * `error` and `error_description`, the failing fields named in the description.
 */
export function oauthErrorBody (problem: Problem): { error: string, error_description: string } {
  const fields = problem.errors?.map((e) => `${e.field} ${e.message}`).join('; ')
  return { error: OAUTH_ERRORS[problem.code] ?? problem.code, error_description: fields === undefined ? problem.detail : `${problem.detail} ${fields}` }
}

export interface RawProblemOptions {
  /** Headers besides the security ones and the framing (Allow on a 405). */
  headers?: Readonly<Record<string, string>>
  /** The request was HEAD: RFC 9110 §9.3.2, the same header fields and no content. */
  head?: boolean
}

/** A whole HTTP/1.1 answer for a socket Node could not parse a request from; the connection closes after it. */
export function rawProblemResponse (problem: Problem, options: RawProblemOptions = {}): string {
  const body = JSON.stringify(problemBody(problem))
  const headers = {
    ...SECURITY_HEADERS,
    ...options.headers,
    'content-type': 'application/problem+json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close'
  }
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}`)
  return `HTTP/1.1 ${problem.status} ${STATUS_CODES[problem.status] ?? 'Error'}\r\n${lines.join('\r\n')}\r\n\r\n${options.head === true ? '' : body}`
}
