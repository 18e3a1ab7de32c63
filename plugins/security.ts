import cors from '@fastify/cors'
import rateLimit, { normalizeIP } from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest, RouteOptions } from 'fastify'
import { BadRequestError, RateLimitedError, UnsupportedMediaTypeError } from '../src/errors.ts'
import { fallbackStore } from '../src/lib/rate-limit-store.ts'
import { SECURITY_HEADERS } from '../src/lib/security-headers.ts'

const JSON_TYPE = /^application\/json\s*(?:;|$)/i
const FORM_TYPE = /^application\/x-www-form-urlencoded\s*(?:;|$)/i

/** A request that carries no body: no length (or 0) and no chunked encoding. */
function bodiless (request: FastifyRequest): boolean {
  const { 'content-length': length, 'transfer-encoding': encoding } = request.headers
  return encoding === undefined && (length === undefined || length === '0')
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route takes form bodies too: one that no browser cookie authenticates (introspection). */
    acceptsForm?: boolean
    /**
     * The route's rate limits. `credentials`: RATE_LIMIT_CREDENTIALS_MAX per client IP, and
     * RATE_LIMIT_IDENTIFIER_MAX per the account `account` names (its key: accounts.limitKey), from any IP (checked once the
     * body is validated); `token`: RATE_LIMIT_TOKEN_MAX per client IP.
     */
    limits?: { kind: 'credentials' | 'token', account?: (request: FastifyRequest) => Promise<string> }
  }
}

/** Security headers (helmet's, made once), CORS, JSON-only state changes, rate limits. */
async function securityPlugin (fastify: FastifyInstance): Promise<void> {
  // Browser front ends on the configured origins only, exactly as written, with their cookies.
  // Its hook runs first, so that errors answered by the hooks below still carry CORS headers.
  const origins = fastify.config.corsOrigins
  if (origins.length > 0) {
    await fastify.register(cors, {
      origin: [...origins],
      credentials: true,
      methods: ['GET', 'POST', 'DELETE'],
      allowedHeaders: ['content-type', 'authorization'],
      exposedHeaders: ['retry-after', 'www-authenticate'],
      maxAge: 600,
      strictPreflight: true
    })
  }

  fastify.removeContentTypeParser(['text/plain'])
  // One hook, not an async function: it runs on every request.
  fastify.addHook('onRequest', (request, reply, done) => {
    reply.headers(SECURITY_HEADERS)
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
    if (request.headers.host === undefined && request.raw.httpVersionMajor === 1 && request.raw.httpVersionMinor === 1) {
      done(new BadRequestError('The Host header is required.'))
      return
    }
    // Every POST must be JSON (415 otherwise), bodiless ones included: a cross-site form or a
    // "simple" fetch cannot send that type without a CORS preflight, so a cookie-authenticated
    // request can never be forged from another site. A route that no cookie authenticates may
    // take forms as well; and a POST with no body at all and an Authorization header passes
    // (logout with a Bearer token, as clients send it): that header forces a preflight too.
    const type = request.headers['content-type']
    if (request.method === 'POST' && !JSON_TYPE.test(type ?? '') &&
        !(request.routeOptions.config.acceptsForm === true && FORM_TYPE.test(type ?? '')) &&
        !(type === undefined && bodiless(request) && request.headers.authorization !== undefined)) {
      done(new UnsupportedMediaTypeError())
      return
    }
    done()
  })
  // The bodiless POST let through above is judged as the empty object the schema describes.
  fastify.addHook('preValidation', (request, _reply, done) => {
    if (request.body === undefined && request.method === 'POST') request.body = {}
    done()
  })

  if (fastify.config.RATE_LIMIT_ENABLED) await fastify.register(rateLimits)
}

/**
 * Rate limits (https://github.com/fastify/fastify-rate-limit), counted in Redis when REDIS_URL
 * is set, so every replica sees the same counts; in memory otherwise. The client IP is
 * `request.ip`, which follows TRUST_PROXY. There is no lockout of an account: that would let
 * anyone lock its owner out; its limit only slows guessing down.
 */
const rateLimits = fp(async function rateLimits (fastify: FastifyInstance): Promise<void> {
  const { config, log } = fastify
  let store
  if (config.REDIS_URL !== undefined) {
    // Commands fail at once while Redis is away (no queue, a short timeout), so that a request
    // never waits on it: the local counts take over and one warning says so.
    // Loaded only when used: about 40 modules a start without Redis does not need.
    const { Redis } = await import('ioredis')
    const redis = new Redis(config.REDIS_URL, { enableOfflineQueue: false, maxRetriesPerRequest: 0, connectTimeout: 1000, commandTimeout: 500 })
    let shared = true
    const lost = (error: Error): void => {
      if (!shared) return
      shared = false
      log.warn({ err: error }, 'Redis does not answer: rate limits are counted per replica until it does')
    }
    redis.on('error', lost)
    redis.on('ready', () => {
      if (shared) return
      shared = true
      log.info('Redis answers again: rate limits are shared')
    })
    fastify.addHook('onClose', async () => { redis.disconnect() })
    store = fallbackStore(redis, lost)
  }
  await fastify.register(rateLimit, { global: false, store })

  const timeWindow = config.rateLimitWindowS * 1000
  const limit = (max: number, key: (request: FastifyRequest) => string | Promise<string>) => {
    const check = fastify.createRateLimit({ max, timeWindow, keyGenerator: key })
    return async (request: FastifyRequest, reply: { header: (name: string, value: number) => unknown }): Promise<void> => {
      const result = await check(request)
      if (result.isAllowed || !result.isExceeded) return
      reply.header('retry-after', result.ttlInSeconds)
      throw new RateLimitedError(result.ttlInSeconds)
    }
  }
  const ip = (request: FastifyRequest): string => normalizeIP(request.ip)
  const byIp = {
    credentials: limit(config.RATE_LIMIT_CREDENTIALS_MAX, (request) => `credentials:${request.routeOptions.url}:${ip(request)}`),
    token: limit(config.RATE_LIMIT_TOKEN_MAX, (request) => `token:${request.routeOptions.url}:${ip(request)}`)
  }
  // One count per account over every credential endpoint, whichever name of it was given:
  // login, /api/token and the password change alike.
  const byAccount = limit(config.RATE_LIMIT_IDENTIFIER_MAX, async (request) => `account:${await request.routeOptions.config.limits!.account!(request)}`)
  const notFound = limit(config.RATE_LIMIT_NOT_FOUND_MAX, (request) => `not-found:${ip(request)}`)

  fastify.addHook('onRoute', (route: RouteOptions) => {
    const limits = route.config?.limits
    if (limits === undefined) return
    // First: a request over the limit costs no authentication, no token check.
    route.onRequest = [byIp[limits.kind], ...[route.onRequest ?? []].flat()]
    if (limits.account !== undefined) route.preHandler = [...[route.preHandler ?? []].flat(), byAccount]
  })
  // Probing for paths is limited too.
  fastify.addHook('onRequest', (request, reply, done) => {
    if (!request.is404) return done()
    notFound(request, reply).then(() => done(), done)
  })
}, { name: 'rate-limits' })

export default fp(securityPlugin, { name: 'security', dependencies: ['config', 'errors', 'lifecycle'] })
