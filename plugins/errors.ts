import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import { ExpectationFailedError, FeatureOffError, RouteNotFoundError } from '../src/errors.ts'
import { offFeatureOf } from '../src/lib/feature-routes.ts'
import { challenge, oauthErrorBody, problemBody, problemOf, rawProblemResponse, toProblem, type Problem } from '../src/problems.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** An OAuth endpoint (token, introspection, revocation): errors in RFC 6749 §5.2's shape, which OAuth clients read. */
    oauth?: boolean
  }
}

function sendProblem (reply: FastifyReply, problem: Problem): FastifyReply {
  const header = challenge(problem)
  if (header !== undefined) reply.header('www-authenticate', header)
  if (reply.request.routeOptions.config?.oauth === true) return reply.code(problem.status).type('application/json').send(oauthErrorBody(problem))
  return reply.code(problem.status).type('application/problem+json').send(problemBody(problem))
}

/**
 * The one error format: RFC 9457 problem+json with a stable `code` and simplejwt's `detail`,
 * or on OAuth endpoints RFC 6749's `error` and `error_description`.
 */
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

  // A path of a feature that is off says which setting turns it on; any other, nothing more.
  fastify.setNotFoundHandler(function (request, reply) {
    const path = request.url.split('?')[0]
    const off = offFeatureOf(fastify.config.features, request.method, request.url)
    const error = off === undefined ? new RouteNotFoundError(request.method, path) : new FeatureOffError(request.method, path, off.name, off.setting)
    return sendProblem(reply, problemOf(error))
  })

  // Node answers an Expect it does not know with an empty 417 unless someone listens.
  fastify.server.on('checkExpectation', (_request, response) => {
    response.socket?.end(rawProblemResponse(problemOf(new ExpectationFailedError())))
  })
}

export default fp(errorsPlugin, { name: 'errors', dependencies: ['config'] })
