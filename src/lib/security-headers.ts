import helmet from 'helmet'
import type { IncomingMessage, ServerResponse } from 'node:http'

/**
 * The security headers of every answer, as helmet (https://helmetjs.github.io) makes them for
 * an API that answers JSON only: nothing to frame or script, so the strictest policy; and
 * `Cache-Control: no-store` (RFC 6749 §5.1: no cache keeps a token or an identity), which the
 * few cacheable answers (the JWKS, the discovery document) replace. They do not depend on the
 * request, so helmet runs once, here, and each answer gets the same object: the plugins set it
 * in one call (plugins/security.ts, and the answers Fastify never sees).
 */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = (() => {
  const headers: Record<string, string> = {}
  const response = {
    setHeader: (name: string, value: unknown) => { headers[name.toLowerCase()] = String(value) },
    removeHeader: (name: string) => { delete headers[name.toLowerCase()] }
  }
  helmet({
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
    crossOriginResourcePolicy: { policy: 'same-site' }
  })({} as IncomingMessage, response as unknown as ServerResponse, () => {})
  return Object.freeze({ ...headers, 'cache-control': 'no-store' })
})()
