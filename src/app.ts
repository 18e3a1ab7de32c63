import AutoLoad from '@fastify/autoload'
import type { FastifyInstance, FastifyReply, FastifyServerOptions } from 'fastify'
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'
import type { Config } from './config.ts'
import { DB_TIMEOUTS_MS } from './db/index.ts'
import type { Clock } from './lib/clock.ts'
import type { ServicesDeps } from './services/index.ts'
import { routeFileOff } from './lib/feature-routes.ts'
import { passwordPolicyKeyword } from './lib/password-policy.ts'
import { SECURITY_HEADERS } from './lib/security-headers.ts'
import { BadRequestError, HeadersTooLargeError, MethodNotAllowedError, RequestTimeoutError } from './errors.ts'
import { problemBody, problemOf, rawProblemResponse, toProblem, type Problem } from './problems.ts'

export interface AppOptions {
  config: Config
  /** The clock; tests pass one they move instead of sleeping. */
  clock?: Clock
  /** Parts of the services a test puts in place of the built ones (src/services/index.ts). */
  overrides?: ServicesDeps['overrides']
}

const root = join(import.meta.dirname, '..')

// A gateway's request id follows the request into the logs, when a trusted proxy sent it.
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

// Node's parser errors (https://nodejs.org/api/http.html#event-clienterror) as problems.
function clientErrorProblem (error: NodeJS.ErrnoException): Problem {
  if (error.code === 'HPE_HEADER_OVERFLOW') return problemOf(new HeadersTooLargeError())
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') return problemOf(new RequestTimeoutError())
  return problemOf(new BadRequestError('The request is not valid HTTP.'))
}

/**
 * Fastify's server options, the same in production and in tests. The timeouts are ordered:
 * the database's (src/db) end before the route deadline, which ends before the socket's idle
 * timeout, so a slow request still gets its 503 in the error shape.
 */
export function serverOptions (config: Pick<Config, 'trustProxy' | 'logLevel' | 'dbStartTimeoutS'>): FastifyServerOptions {
  const { trustProxy } = config
  return {
    logger: {
      level: config.logLevel,
      // Credentials never reach the logs.
      redact: {
        paths: [
          'req.headers.authorization', 'req.headers.cookie', 'res.headers["set-cookie"]',
          '*.password', '*.current_password', '*.new_password', '*.refresh', '*.access', '*.token'
        ],
        censor: '[redacted]'
      }
    },
    bodyLimit: 16 * 1024,
    // Django clients send /api/token/ with the slash; both forms answer.
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 200 },
    trustProxy,
    requestIdHeader: false,
    genReqId: (req: IncomingMessage) => {
      const id = req.headers['x-request-id']
      const fromProxy = trustProxy !== false && trustProxy(req.socket.remoteAddress ?? '', 0)
      return fromProxy && typeof id === 'string' && REQUEST_ID.test(id) ? id : randomUUID()
    },
    // Starting may wait for PGlite's first initdb, for another replica's migrations, or for a
    // PostgreSQL that does not answer yet (DB_START_TIMEOUT).
    pluginTimeout: 120_000 + config.dbStartTimeoutS * 1000,
    handlerTimeout: DB_TIMEOUTS_MS.query + 2000,
    connectionTimeout: DB_TIMEOUTS_MS.query + 4000,
    requestTimeout: 30_000,
    keepAliveTimeout: 72_000,
    // The errors plugin answers requests that arrive while closing, in the error shape.
    return503OnClosing: false,
    clientErrorHandler (error: NodeJS.ErrnoException, socket: Socket) {
      if (error.code === 'ECONNRESET' || socket.destroyed) return
      // As Node's own handler: no answer into the middle of one already under way.
      const answering = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true
      // RFC 9110 §9.3.2: no content in the answer to HEAD, or the client reads it as the next answer.
      const head = (error as { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD '
      if (socket.writable && !answering) socket.end(rawProblemResponse(clientErrorProblem(error), { head }))
      else socket.destroy(error)
    },
    // A URL Fastify cannot decode (POST /%): never echoed back.
    frameworkErrors (error, _request, reply: FastifyReply) {
      const problem = toProblem(error)
      return reply.headers(SECURITY_HEADERS).code(problem.status).type('application/problem+json').send(problemBody(problem))
    },
    ajv: {
      customOptions: {
        // Validation reports every failing field, refuses wrong types instead of coercing
        // them, and refuses unknown properties instead of dropping them.
        allErrors: true,
        coerceTypes: false,
        removeAdditional: false
      },
      plugins: [(ajv) => ajv.addKeyword(passwordPolicyKeyword)]
    },
    // A request without Host gets a problem from the security plugin, not Node's empty 400.
    ...{ http: { requireHostHeader: false } }
  }
}

/** The application: external and app plugins, then routes. The load order is the architecture. */
export default async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  // RFC 9112 §9.6: a connection half-closed by the client "does not delimit a request message,
  // nor does it imply that the client is no longer interested in a response". Node's server ends
  // its side at the client's FIN and drops the answer of a request still in flight (a login
  // sent by `nc -N` or any client that shuts down its write side after the request); with this
  // flag it answers every request it has read, then closes. It is Node's own switch
  // (lib/_http_server.js socketOnEnd), kept for userland servers (nodejs/node#36819); an idle
  // half-closed connection is still closed at once, and an incomplete request still gets its 400.
  (fastify.server as typeof fastify.server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true
  // Node drops a CONNECT without a word unless someone listens: this service tunnels nothing,
  // so it says so (RFC 9110 §15.5.6: a 405 names the methods it serves in Allow).
  fastify.server.on('connect', (_request: IncomingMessage, socket: Duplex) => {
    socket.end(rawProblemResponse(
      problemOf(new MethodNotAllowedError('CONNECT is not supported.')),
      { headers: { allow: 'GET, HEAD, POST, DELETE, OPTIONS' } }
    ))
  })
  await fastify.register(AutoLoad, { dir: join(root, 'plugins'), options: opts })
  // A feature that is off has no routes: its files are not loaded (src/lib/feature-routes.ts).
  await fastify.register(AutoLoad, { dir: join(root, 'routes'), options: opts, ignoreFilter: (file: string) => routeFileOff(opts.config.features, file) })
}
