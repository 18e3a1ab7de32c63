import type { FastifyRequest } from 'fastify'
import type { Operator } from '../services/admin.ts'
import type { Caller } from '../services/audit.ts'

/**
 * Who is asking: the user agent and the client address (as TRUST_PROXY lets Fastify read it),
 * and the request's logger, so that the security events a service records are logged with the
 * request id.
 */
export function callerOf (request: FastifyRequest): Caller {
  return { device: { userAgent: request.headers['user-agent'] ?? null, ip: request.ip }, log: request.log }
}

/** The operator of an admin route's request: its service client (requireAdmin), and the caller. */
export function operatorOf (request: FastifyRequest): Operator {
  return { clientId: request.adminClient!.id, caller: callerOf(request) }
}
