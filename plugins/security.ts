import cors from '@fastify/cors'
import rateLimit, { normalizeIP } from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest, RouteOptions } from 'fastify'
import { once } from 'node:events'
import { resolve } from 'node:path'
import { BadRequestError, FORM_OR_JSON, JSON_ONLY, RateLimitedError, UnsupportedMediaTypeError } from '../src/errors.ts'
import type { Limit } from '../src/http/limits.ts'
import { fallbackStore } from '../src/http/rate-limit-store.ts'
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
    /** The route's rate limits (src/http/limits.ts). */
    limits?: Limit[]
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
      // PATCH: a front end renames its user's passkeys (PATCH /api/auth/passkeys/:id).
      methods: ['GET', 'POST', 'PATCH', 'DELETE'],
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
      done(new UnsupportedMediaTypeError(request.routeOptions.config.acceptsForm === true ? FORM_OR_JSON : JSON_ONLY))
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
    // The start waits for Redis's first answer or its first failure, two seconds at most (a
    // Redis still loading its data answers later): the first requests are counted where every
    // replica counts them, with no warning that Redis was not there yet. once() rejects on an
    // 'error' too, whose warning is lost()'s.
    await once(redis, 'ready', { signal: AbortSignal.timeout(2000) }).catch(() => {})
    // Accounts are counted by their id, which is the database's: the keys of deployments (or
    // test databases) sharing one Redis never meet. Every replica of one database shares them.
    store = fallbackStore(redis, config.DB_ENGINE === 'postgres' ? new URL(config.DATABASE_URL!).pathname.slice(1) : resolve(config.DB_NAME), lost)
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
  const notFound = limit(config.RATE_LIMIT_NOT_FOUND_MAX, (request) => `not-found:${ip(request)}`)

  // Each route's own: per client address on that route, counted first (a request over the limit
  // costs no authentication, no token check); per key once the body is validated, one counter
  // for every route that names it (each limiter counts apart while Redis is away), with the
  // key the route at hand gives.
  // A request whose route names no key for it (undefined) is not counted there.
  const byKey = new Map<string, ReturnType<typeof limit>>()
  const sharedLimit = (name: string, max: number): ReturnType<typeof limit> => {
    let limiter = byKey.get(name)
    if (limiter === undefined) {
      const keys = new WeakMap<FastifyRequest, string>()
      const counted = limit(max, (request) => keys.get(request)!)
      limiter = async (request, reply) => {
        const { by } = request.routeOptions.config.limits!.find((l) => l.name === name)!
        const key = await (by as Exclude<typeof by, 'ip'>)(request)
        if (key === undefined) return
        keys.set(request, `${name}:${key}`)
        await counted(request, reply)
      }
      byKey.set(name, limiter)
    }
    return limiter
  }
  fastify.addHook('onRoute', (route: RouteOptions) => {
    for (const { name, max, by } of route.config?.limits ?? []) {
      if (by === 'ip') route.onRequest = [limit(max, (request) => `${name}:${route.url}:${ip(request)}`), ...[route.onRequest ?? []].flat()]
      else route.preHandler = [...[route.preHandler ?? []].flat(), sharedLimit(name, max)]
    }
  })

  // Probing for paths is limited too.
  fastify.addHook('onRequest', (request, reply, done) => {
    if (!request.is404) return done()
    notFound(request, reply).then(() => done(), done)
  })
}, { name: 'rate-limits' })

export default fp(securityPlugin, { name: 'security', dependencies: ['config', 'errors', 'lifecycle'] })
