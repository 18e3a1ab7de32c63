import type { FastifyRequest } from 'fastify'

const USERNAME = /^[\p{L}\p{N}.+_-]{1,150}$/u

/** NFKC, as Django's AbstractBaseUser.normalize_username does. */
export function normalizeUsername (username: string): string {
  return username.normalize('NFKC')
}

/** Letters, digits and . + - _ only (no @: an identifier with @ is always an email), at most 150. */
export function isUsername (username: string): boolean {
  return USERNAME.test(username)
}

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
