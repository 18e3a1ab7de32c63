import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import { ServiceUnavailableError } from '../src/errors.ts'
import { challenge, problemBody, rawProblemResponse, RAW_SECURITY_HEADERS, toProblem, type Problem } from '../src/problems.ts'

function sendProblem (reply: FastifyReply, problem: Problem): FastifyReply {
  const header = challenge(problem)
  if (header !== undefined) reply.header('www-authenticate', header)
  // Helmet's headers come from its onRequest hook: an error thrown by a hook that runs before
  // it (the closing check below, registered first) would otherwise go without them.
  reply.headers(RAW_SECURITY_HEADERS)
  return reply.code(problem.status).type('application/problem+json').send(problemBody(problem))
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

  // Node answers an Expect it does not know with an empty 417 unless someone listens.
  fastify.server.on('checkExpectation', (_request, response) => {
    response.socket?.end(rawProblemResponse({ status: 417, code: 'expectation_failed', detail: 'Only Expect: 100-continue is supported.' }))
  })

  // Requests that still arrive while the server closes get the error shape, not Fastify's own 503.
  let closing = false
  fastify.addHook('preClose', async () => { closing = true })
  fastify.addHook('onRequest', async () => {
    if (closing) throw new ServiceUnavailableError()
  })
}

export default fp(errorsPlugin, { name: 'errors' })
