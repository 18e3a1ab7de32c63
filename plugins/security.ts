import helmet from '@fastify/helmet'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { BadRequestError, UnsupportedMediaTypeError } from '../src/errors.ts'

const JSON_TYPE = /^application\/json\s*(?:;|$)/i
const FORM_TYPE = /^application\/x-www-form-urlencoded\s*(?:;|$)/i

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route takes form bodies too: one that no browser cookie authenticates (introspection). */
    acceptsForm?: boolean
  }
}

/** Security headers (https://github.com/fastify/fastify-helmet) and JSON-only state changes. */
async function securityPlugin (fastify: FastifyInstance): Promise<void> {
  // An API answers JSON only: no content to frame or script, so the strictest policy.
  // src/problems.ts's RAW_SECURITY_HEADERS repeats these for answers Fastify never sees.
  await fastify.register(helmet, {
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
    crossOriginResourcePolicy: { policy: 'same-site' }
  })

  fastify.removeContentTypeParser(['text/plain'])
  fastify.addHook('onRequest', async (request) => {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
    if (request.headers.host === undefined && request.raw.httpVersionMajor === 1 && request.raw.httpVersionMinor === 1) {
      throw new BadRequestError('The Host header is required.')
    }
    // Every POST must be JSON (415 otherwise), bodiless ones included: a cross-site form or a
    // "simple" fetch cannot send that type without a CORS preflight, so a cookie-authenticated
    // request can never be forged from another site. A route that no cookie authenticates may
    // take forms as well.
    if (request.method === 'POST' && !JSON_TYPE.test(request.headers['content-type'] ?? '') &&
        !(request.routeOptions.config.acceptsForm === true && FORM_TYPE.test(request.headers['content-type'] ?? ''))) {
      throw new UnsupportedMediaTypeError()
    }
  })
}

export default fp(securityPlugin, { name: 'security' })
