import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { clientOf } from '../src/lib/client.ts'
import { createAuditTrail, type AuditEvent, type AuditTrail } from '../src/services/audit.ts'

declare module 'fastify' {
  interface FastifyInstance {
    audit: AuditTrail
  }
  interface FastifyRequest {
    /** Records a security event of this request: the audit trail, the counters, one log line. */
    audit: (event: AuditEvent) => void
  }
}

/** The audit trail of security events (`audit_events`), pruned by the cleanup plugin. */
async function auditPlugin (fastify: FastifyInstance): Promise<void> {
  const { db, clock, counters, log } = fastify
  const trail = createAuditTrail({
    db,
    clock,
    onDropped: (error, count) => log.warn({ err: error, count }, 'audit events could not be written')
  })
  fastify.decorate('audit', trail)
  fastify.decorateRequest('audit', function (this: FastifyRequest, event: AuditEvent) {
    const outcome = event.outcome ?? 'success'
    trail.record({ client: clientOf(this), ...event })
    counters.events.inc({ event: event.event, outcome })
    const level = outcome === 'failure' || event.event === 'reuse_detected' ? 'warn' : 'info'
    this.log[level]({ event: event.event, outcome, userId: event.userId, sessionId: event.sessionId, ...event.detail }, event.event)
  })
  fastify.addHook('onClose', () => trail.flush())
}

export default fp(auditPlugin, { name: 'audit', dependencies: ['config', 'db', 'metrics'] })
