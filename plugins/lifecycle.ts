import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { Server } from 'node:http'
import { ShuttingDownError } from '../src/errors.ts'
import { SECURITY_HEADERS } from '../src/lib/security-headers.ts'

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

function lingerIdleConnections (server: Server): void {
  const closeIdle = server.closeIdleConnections.bind(server)
  // server.close() calls this method first: the idle connections are closed later instead.
  server.closeIdleConnections = () => {}
  setTimeout(closeIdle, IDLE_LINGER_MS).unref()
}

/** A service going away: serving, then draining (readiness 503, all else served), then closing (every request 503, in the error shape). */
async function lifecyclePlugin (fastify: FastifyInstance): Promise<void> {
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

export default fp(lifecyclePlugin, { name: 'lifecycle', dependencies: ['errors'] })
