import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { AppOptions } from '../src/app.ts'
import type { Config } from '../src/config.ts'
import { systemClock, type Clock } from '../src/lib/clock.ts'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    clock: Clock
  }
}

/**
 * The configuration, parsed once by src/config.ts's loadConfig before the app is built (the
 * server, the CLI and the tests share it), decorated as it is; and the one clock.
 */
async function configPlugin (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  fastify.decorate('config', opts.config)
  fastify.decorate('clock', opts.clock ?? systemClock)
}

export default fp(configPlugin, { name: 'config' })
