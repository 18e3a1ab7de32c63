import AutoLoad from '@fastify/autoload'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import type { ConfigPluginOptions } from '../plugins/config.ts'
import type { AuthPluginOptions } from '../plugins/auth.ts'
import type { KeysPluginOptions } from '../plugins/keys.ts'
import type { Config } from './config.ts'

export type AppOptions = ConfigPluginOptions & KeysPluginOptions & AuthPluginOptions

const root = join(import.meta.dirname, '..')

/** Fastify's server options, the same in production and in tests. */
export function serverOptions (config: Pick<Config, 'TRUST_PROXY' | 'LOG_LEVEL' | 'DEBUG'>): FastifyServerOptions {
  const trustProxy = config.TRUST_PROXY
  return {
    logger: {
      level: config.LOG_LEVEL ?? (config.DEBUG ? 'debug' : 'info'),
      // Credentials never reach the logs.
      redact: {
        paths: [
          'req.headers.authorization', 'req.headers.cookie', 'res.headers["set-cookie"]',
          '*.password', '*.current_password', '*.new_password', '*.refresh', '*.access', '*.token'
        ],
        censor: '[redacted]'
      }
    },
    bodyLimit: 16 * 1024,
    // Django clients send /api/token/ with the slash; both forms answer.
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 200 },
    trustProxy: trustProxy === '' || trustProxy === 'false'
      ? false
      : trustProxy === 'true'
        ? true
        // A hop count: trust that many proxies in front of the service.
        : /^[0-9]+$/.test(trustProxy) ? (_address: string, hop: number) => hop < Number(trustProxy) : trustProxy,
    // Behind a gateway, its request id follows the request into the logs.
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    // Starting may wait for PGlite's first initdb, or for another replica's migrations.
    pluginTimeout: 120_000,
    connectionTimeout: 10_000,
    requestTimeout: 30_000,
    keepAliveTimeout: 72_000,
    ajv: {
      customOptions: {
        // Validation reports every failing field, refuses wrong types instead of coercing
        // them, and refuses unknown properties instead of dropping them.
        allErrors: true,
        coerceTypes: false,
        removeAdditional: false
      }
    }
  }
}

/** The application: external and app plugins, then routes. The load order is the architecture. */
export default async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  await fastify.register(AutoLoad, { dir: join(root, 'plugins'), options: opts })
  await fastify.register(AutoLoad, { dir: join(root, 'routes'), options: opts })
}
