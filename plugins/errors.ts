import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import { STATUS_CODES } from 'node:http'
import { isDomainError, ValidationFailedError, type FieldError } from '../src/errors.ts'

interface Problem {
  status: number
  code: string
  detail: string
  errors?: FieldError[]
}

// Fastify's own 4xx errors, as stable codes and plain sentences.
const FASTIFY_ERRORS = new Map<string, Omit<Problem, 'status'>>(Object.entries({
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { code: 'unsupported_media_type', detail: 'Request bodies must be application/json.' },
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'payload_too_large', detail: 'The request body is too large.' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'invalid_json', detail: 'The request body is empty; send a JSON object.' },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'invalid_json', detail: 'The request body is not valid JSON.' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { code: 'bad_request', detail: 'Content-Length does not match the body.' },
  FST_ERR_CTP_INVALID_TYPE: { code: 'unsupported_media_type', detail: 'The Content-Type header is not valid.' }
}))

// Errors of a database that cannot be reached or is overloaded: the request may succeed
// later, so 503. SQLSTATE 08xxx connection, 57P0x shutdown, 53300 too many connections,
// 57014 statement timeout, 55P03 lock timeout.
const UNAVAILABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', '57P01', '57P02', '57P03', '53300', '57014', '55P03'])
function isDatabaseUnavailable (error: FastifyError): boolean {
  const code = (error as { code?: unknown }).code
  return (typeof code === 'string' && (UNAVAILABLE.has(code) || code.startsWith('08'))) ||
    /Connection terminated|timeout exceeded when trying to connect|Cannot use a pool after calling end|is not queryable/.test(error.message)
}

function fieldErrors (error: FastifyError): FieldError[] {
  return (error.validation ?? []).map((v) => {
    const params = v.params as { missingProperty?: string, additionalProperty?: string }
    const path = [v.instancePath.split('/').filter(Boolean).join('.'), params.missingProperty ?? params.additionalProperty]
      .filter(Boolean).join('.')
    const message = params.additionalProperty !== undefined ? 'is not allowed' : v.message ?? 'is invalid'
    return { field: path === '' ? (error.validationContext ?? 'body') : path, message }
  })
}

function toProblem (error: FastifyError): Problem {
  if (error.validation !== undefined) {
    return { status: 400, code: 'validation_failed', detail: 'Invalid input.', errors: fieldErrors(error) }
  }
  if (error instanceof ValidationFailedError) {
    return { status: 400, code: 'validation_failed', detail: error.message, errors: error.errors }
  }
  if (isDomainError(error)) return { status: error.statusCode, code: error.code.toLowerCase(), detail: error.message }
  const known = FASTIFY_ERRORS.get(error.code)
  const status = error.statusCode ?? 500
  if (known !== undefined) return { status, ...known }
  if (status < 500 && status >= 400) {
    // JSON parse errors (including __proto__ keys) and the like: safe to name, not to echo.
    return { status, code: status === 400 ? 'bad_request' : 'client_error', detail: STATUS_CODES[status] ?? 'Bad Request' }
  }
  if (isDatabaseUnavailable(error)) return { status: 503, code: 'service_unavailable', detail: 'The database is unavailable; try again shortly.' }
  return { status: 500, code: 'internal_error', detail: 'Internal Server Error' }
}

function sendProblem (reply: FastifyReply, problem: Problem): FastifyReply {
  if (problem.status === 401) {
    // RFC 6750 §3: a 401 names the scheme; with a token that failed, error="invalid_token".
    const invalid = problem.code === 'token_not_valid' || problem.code === 'token_expired'
    reply.header('www-authenticate', `Bearer realm="authgate"${invalid ? `, error="invalid_token", error_description="${problem.detail}"` : ''}`)
  }
  return reply.code(problem.status).type('application/problem+json').send({
    type: 'about:blank',
    title: STATUS_CODES[problem.status] ?? 'Error',
    ...problem
  })
}

/** The one error format: RFC 9457 problem+json with a stable `code` and simplejwt's `detail`. */
async function errorsPlugin (fastify: FastifyInstance): Promise<void> {
  fastify.setErrorHandler(function (error: FastifyError, request, reply) {
    const problem = toProblem(error)
    if (problem.status === 503) {
      request.log.warn({ err: error }, 'service unavailable')
    } else if (problem.status >= 500) {
      request.log.error({ err: error }, 'request failed')
    } else if (problem.code === 'bad_request' || problem.code === 'invalid_json') {
      request.log.info({ err: { message: error.message, code: error.code } }, 'bad request')
    }
    return sendProblem(reply, problem)
  })

  fastify.setNotFoundHandler(function (request, reply) {
    return sendProblem(reply, { status: 404, code: 'not_found', detail: `No route for ${request.method} ${request.url.split('?')[0]}.` })
  })
}

export default fp(errorsPlugin, { name: 'errors' })
