import type { FastifyRequest } from 'fastify'
import { normalizeUsername } from '../lib/usernames.ts'

/**
 * A preValidation hook that NFKC-normalises the named body fields, so that the schema judges a
 * username as it will be stored and looked up ("E\u0301mile" is "Émile" at register and login alike).
 */
export function normalizeFields (...fields: string[]) {
  return async function normalize (request: FastifyRequest): Promise<void> {
    const body = request.body as Record<string, unknown> | null
    if (typeof body !== 'object' || body === null) return
    for (const field of fields) {
      const value = body[field]
      if (typeof value === 'string') body[field] = normalizeUsername(value)
    }
  }
}
