import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import type { Server } from 'node:http'
import { ShuttingDownError } from '../src/errors.ts'
import { SECURITY_HEADERS } from '../src/lib/security-headers.ts'
import { challenge, oauthErrorBody, problemBody, rawProblemResponse, toProblem, type Problem } from '../src/problems.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** An OAuth endpoint (token, introspection, revocation): errors in RFC 6749 §5.2's shape, which OAuth clients read. */
    oauth?: boolean
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Starts the drain before a close: /health/ready answers 503, so gateways stop routing here; every other request is still served. */
    drain: () => void
    /** Whether the service is going away (draining or closing): readiness answers 503. */
    readonly draining: boolean
  }
}

/**
 * How long keep-alive connections that are idle when the server closes stay open. Node's
 * server.close() destroys them at once, so a request a client is just sending on one would be
 * reset; meanwhile it is answered 503 with Connection: close instead.
 */
export const IDLE_LINGER_MS = 1000

function sendProblem (reply: FastifyReply, problem: Problem): FastifyReply {
  const header = challenge(problem)
  if (header !== undefined) reply.header('www-authenticate', header)
  if (reply.request.routeOptions.config?.oauth === true) return reply.code(problem.status).type('application/json').send(oauthErrorBody(problem))
  return reply.code(problem.status).type('application/problem+json').send(problemBody(problem))
}

function lingerIdleConnections (server: Server): void {
  const closeIdle = server.closeIdleConnections.bind(server)
  // server.close() calls this method first: the idle connections are closed later instead.
  server.closeIdleConnections = () => {}
  setTimeout(closeIdle, IDLE_LINGER_MS).unref()
}

/**
 * The one error format: RFC 9457 problem+json with a stable `code` and simplejwt's `detail`,
 * or on OAuth endpoints RFC 6749's `error` and `error_description`; and the answers of a
 * service going away.
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

  fastify.setNotFoundHandler(function (request, reply) {
    return sendProblem(reply, { status: 404, code: 'not_found', detail: `No route for ${request.method} ${request.url.split('?')[0]}.` })
  })

  // Node answers an Expect it does not know with an empty 417 unless someone listens.
  fastify.server.on('checkExpectation', (_request, response) => {
    response.socket?.end(rawProblemResponse({ status: 417, code: 'expectation_failed', detail: 'Only Expect: 100-continue is supported.' }))
  })

  // Serving, then draining (readiness 503, all else served), then closing (every request 503).
  let phase: 'serving' | 'draining' | 'closing' = 'serving'
  fastify.decorate('draining', { getter: () => phase !== 'serving' })
  fastify.decorate('drain', () => { if (phase === 'serving') phase = 'draining' })
  fastify.addHook('preClose', async () => {
    phase = 'closing'
    lingerIdleConnections(fastify.server)
  })
  // Requests that still arrive while the server closes get the error shape, not Fastify's own
  // 503, and no further work. This hook runs first (the security plugin depends on this one),
  // before the security headers are set: its answer sets them itself. Both hooks run on every
  // request: callbacks, not async functions.
  fastify.addHook('onRequest', (_request, reply, done) => {
    if (phase !== 'closing') return done()
    reply.headers(SECURITY_HEADERS)
    done(new ShuttingDownError())
  })
  // Fastify says Connection: close to requests that arrive while closing; requests in flight
  // say it too, so that their connections close once answered instead of idling on.
  fastify.addHook('onSend', (_request, reply, payload, done) => {
    if (phase === 'closing') reply.header('connection', 'close')
    done(null, payload)
  })
}

export default fp(errorsPlugin, { name: 'errors' })
