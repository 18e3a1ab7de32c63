import type { FastifyRequest } from 'fastify'
import type { Client } from '../services/sessions.ts'

/** Who is asking: the user agent, and the client address as TRUST_PROXY lets Fastify read it. */
export function clientOf (request: FastifyRequest): Client {
  return { userAgent: request.headers['user-agent'] ?? null, ip: request.ip }
}
