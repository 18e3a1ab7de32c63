import client, { Counter, Gauge, Registry } from '@prometheus-io/client'
import metricsModule from 'fastify-metrics'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { poolUsage } from '../src/db/index.ts'
import { safeEqual } from '../src/lib/constant-time.ts'
import { hashingState } from '../src/lib/password-hashing.ts'
import { NotAuthenticatedError, RateLimitedError } from '../src/errors.ts'
import { problems } from '../src/schemas.ts'
import { perIp } from '../src/http/limits.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** The service's own counters; exposed at GET /metrics when METRICS_TOKEN is set. */
    counters: Counters
  }
}

export interface Counters {
  /** Security events by name and outcome: logins ok and failed, refreshes, reuse detections, logouts. */
  events: Counter<'event' | 'outcome'>
  /** Tokens issued, by type: a pair at each sign-in and rotation. */
  tokensIssued: Counter<'type'>
  /** Requests answered 429, by route. */
  rateLimited: Counter<'route'>
}

// Neither the token nor its length shows in the timing.
function bearerMatches (request: FastifyRequest, token: string): boolean {
  const header = request.headers.authorization ?? ''
  return safeEqual(header.startsWith('Bearer ') ? header.slice(7) : '', token)
}

/**
 * Prometheus metrics (https://github.com/SkeLLLa/fastify-metrics): request latency by route,
 * Node's own, the service's counters. One registry per app, so that apps never share counts.
 * GET /metrics exists only with METRICS_TOKEN set, and answers only that token as Bearer.
 */
async function metricsPlugin (fastify: FastifyInstance): Promise<void> {
  const registry = new Registry()
  const counters: Counters = {
    events: new Counter({ name: 'authgate_events_total', help: 'Security events by name and outcome', labelNames: ['event', 'outcome'], registers: [registry] }),
    tokensIssued: new Counter({ name: 'authgate_tokens_issued_total', help: 'Tokens issued, by type', labelNames: ['type'], registers: [registry] }),
    rateLimited: new Counter({ name: 'authgate_rate_limited_total', help: 'Requests refused by a rate limit, by route', labelNames: ['route'], registers: [registry] })
  }
  fastify.decorate('counters', counters)
  const { db } = fastify
  if (poolUsage(db) !== undefined) {
    // Read at each scrape: connections in the pool, idle, and queries waiting for one.
    new Gauge({ // eslint-disable-line no-new
      name: 'authgate_db_pool_connections',
      help: 'PostgreSQL pool: total and idle connections, waiting queries',
      labelNames: ['state'],
      registers: [registry],
      collect () {
        for (const [state, value] of Object.entries(poolUsage(db) ?? {})) this.set({ state }, value)
      }
    })
  }
  // Read at each scrape: refreshes waiting to be committed with the next group, and groups at
  // the database (src/services/sessions/sessions.ts: concurrent refreshes share a commit).
  new Gauge({ // eslint-disable-line no-new
    name: 'authgate_refresh_rotations',
    help: 'Refreshes waiting for the next group (waiting), groups of them at the database (running)',
    labelNames: ['state'],
    registers: [registry],
    collect () {
      const { waiting, running } = fastify.sessions.rotations()
      this.set({ state: 'waiting' }, waiting)
      this.set({ state: 'running' }, running)
    }
  })
  // Read at each scrape: password hashings at work in libuv's pool, those waiting for a slot, and
  // how many may run now (src/lib/password-hashing.ts: never all of the pool, which other
  // sign-ins share, and one fewer while the event loop is busy).
  new Gauge({ // eslint-disable-line no-new
    name: 'authgate_password_hashing',
    help: 'Password hashings and checks (bcrypt) at work (running), waiting for a slot of the thread pool (waiting), and how many may run at once now (allowed)',
    labelNames: ['state'],
    registers: [registry],
    collect () {
      const { running, waiting, allowed } = hashingState()
      this.set({ state: 'running' }, running)
      this.set({ state: 'waiting' }, waiting)
      this.set({ state: 'allowed' }, allowed)
    }
  })
  // On errors only: a request that succeeds pays nothing for this count.
  fastify.addHook('onError', (request, _reply, error, done) => {
    if (error instanceof RateLimitedError) counters.rateLimited.inc({ route: request.routeOptions.url ?? 'unknown' })
    done()
  })

  if (!fastify.config.features.metrics) return
  const token = fastify.config.METRICS_TOKEN!
  // A CommonJS module compiled from ES: its plugin is the `default` export.
  await fastify.register(metricsModule.default, {
    promClient: client,
    defaultMetrics: { enabled: true, register: registry },
    routeMetrics: {
      enabled: true,
      routeBlacklist: ['/metrics', '/health/live', '/health/ready'],
      overrides: { histogram: { registers: [registry] }, summary: { registers: [registry] } }
    },
    endpoint: {
      url: '/metrics',
      method: 'GET',
      logLevel: 'warn',
      // Guessing the token is limited per client IP, as credentials are.
      config: { limits: [perIp('credentials', fastify.config.RATE_LIMIT_CREDENTIALS_MAX)] },
      schema: {
        tags: ['operations'],
        summary: 'Prometheus metrics',
        security: [{ metricsToken: [] }],
        produces: ['text/plain'],
        response: { 200: { type: 'string', description: 'Prometheus text format' }, ...problems(401, 429) }
      },
      onRequest: async (request: FastifyRequest) => {
        if (!bearerMatches(request, token)) throw new NotAuthenticatedError()
      },
      handler: () => {}
    }
  })
}

export default fp(metricsPlugin, { name: 'metrics', dependencies: ['config', 'db', 'docs', 'errors'] })
