import type { FastifyRequest } from 'fastify'

/**
 * A rate limit a route declares (route config `limits`; plugins/security.ts counts them, per
 * RATE_LIMIT_WINDOW): `max` requests of one client address to this route, or `max` requests
 * for one key the route names from the request (an account), from any address, over every
 * route that names the same `name`.
 */
export interface Limit {
  /** What is counted: the counts of routes naming one name meet when they are per key. */
  name: string
  max: number
  /** 'ip', or the key of the request: read once the body is validated. */
  by: 'ip' | ((request: FastifyRequest) => Promise<string>)
}

/** `max` requests a window from one client address to the route. */
export const perIp = (name: string, max: number): Limit => ({ name, max, by: 'ip' })

/** `max` requests a window for the key `key` gives, from any address, on every route naming `name`. */
export const perKey = (name: string, max: number, key: (request: FastifyRequest) => Promise<string>): Limit => ({ name, max, by: key })
