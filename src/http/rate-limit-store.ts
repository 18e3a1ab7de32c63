import type { FastifyRateLimitStore, FastifyRateLimitStoreCtor } from '@fastify/rate-limit'
import LocalStore from '@fastify/rate-limit/store/LocalStore.js'
import RedisStore from '@fastify/rate-limit/store/RedisStore.js'
import type { Redis } from 'ioredis'

/**
 * @fastify/rate-limit's Redis store, shared by every replica, with its local store behind it:
 * while Redis cannot answer, each replica counts on its own (limits stay, per replica) and
 * `onFallback` hears why. Keys carry their own namespace (`authgate:rl:<namespace>:`), so a
 * child is the store itself.
 */
export function fallbackStore (redis: Redis, namespace: string, onFallback: (error: Error) => void): FastifyRateLimitStoreCtor {
  const shared = new RedisStore(false, false, redis, `authgate:rl:${namespace}:`)
  const local = new LocalStore(false, false, 10_000)
  return class FallbackStore implements FastifyRateLimitStore {
    incr (...[key, done, timeWindow, max]: Parameters<FastifyRateLimitStore['incr']>): void {
      shared.incr(key, (error, result) => {
        if (error === null) return done(null, result)
        onFallback(error)
        local.incr(key, done, timeWindow, max)
      }, timeWindow, max)
    }

    child (): FastifyRateLimitStore {
      return this
    }
  }
}
