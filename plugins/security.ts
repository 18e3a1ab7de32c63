import helmet from '@fastify/helmet'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { UnsupportedMediaTypeError } from '../src/errors.ts'

const JSON_TYPE = /^application\/json\s*(?:;|$)/i

/** Security headers (https://github.com/fastify/fastify-helmet) and JSON-only state changes. */
async function securityPlugin (fastify: FastifyInstance): Promise<void> {
  // An API answers JSON only: no content to frame or script, so the strictest policy.
  await fastify.register(helmet, {
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
    crossOriginResourcePolicy: { policy: 'same-site' }
  })

  // Every POST must be JSON (415 otherwise), bodiless ones included: a cross-site form or a
  // "simple" fetch cannot send that type without a CORS preflight, so a cookie-authenticated
  // request can never be forged from another site.
  fastify.removeContentTypeParser(['text/plain'])
  fastify.addHook('onRequest', async (request) => {
    if (request.method === 'POST' && !JSON_TYPE.test(request.headers['content-type'] ?? '')) {
      throw new UnsupportedMediaTypeError()
    }
  })
}

export default fp(securityPlugin, { name: 'security' })
