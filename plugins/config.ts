import fastifyEnv from '@fastify/env'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ConfigSchema, type Config } from '../src/config.ts'
import { durationToSeconds } from '../src/lib/duration.ts'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config & { SECRET_KEY: string }
  }
}

export interface ConfigPluginOptions {
  /** The variables to read; the process environment and .env when absent. */
  env?: Record<string, unknown>
}

const MIN_SECRET_LENGTH = 32
const DURATIONS = ['JWT_ACCESS_TOKEN_LIFETIME', 'JWT_REFRESH_TOKEN_LIFETIME', 'AUTH_SESSION_MAX_LIFETIME'] as const
const MAX_DURATION_S = 3650 * 86400

// In development a missing SECRET_KEY is generated once into the data folder, so tokens and
// encrypted keys survive restarts; in production it must be given, and long.
async function developmentSecret (fastify: FastifyInstance, config: Config): Promise<string> {
  if (config.DB_ENGINE === 'pglite' && config.DB_NAME.startsWith('memory://')) {
    fastify.log.warn('SECRET_KEY is not set: using a random one for this in-memory run')
    return randomBytes(32).toString('base64url')
  }
  const folder = config.DB_ENGINE === 'pglite' ? config.DB_NAME : './data'
  const file = join(folder, 'secret_key')
  try {
    return (await readFile(file, 'utf8')).trim()
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
  }
  const secret = randomBytes(48).toString('base64url')
  await mkdir(folder, { recursive: true })
  await writeFile(file, secret + '\n', { mode: 0o600, flag: 'wx' })
  fastify.log.warn({ file }, 'SECRET_KEY is not set: generated one into the data folder (development only)')
  return secret
}

/** Reads and validates the configuration (https://github.com/fastify/fastify-env). */
async function configPlugin (fastify: FastifyInstance, opts: ConfigPluginOptions): Promise<void> {
  // Given variables are the whole configuration: the process environment is not merged in.
  const fromProcess = opts.env === undefined
  await fastify.register(fastifyEnv, { schema: ConfigSchema, data: opts.env ?? {}, env: fromProcess, dotenv: fromProcess })
  const config = fastify.config as Config
  if (config.SECRET_KEY === undefined) {
    if (config.NODE_ENV === 'production') throw new Error('SECRET_KEY is required when NODE_ENV=production')
    config.SECRET_KEY = await developmentSecret(fastify, config)
  } else if (config.NODE_ENV === 'production' && config.SECRET_KEY.length < MIN_SECRET_LENGTH) {
    throw new Error(`SECRET_KEY must be at least ${MIN_SECRET_LENGTH} characters when NODE_ENV=production`)
  }
  for (const name of DURATIONS) {
    const seconds = durationToSeconds(config[name])
    if (seconds < 1 || seconds > MAX_DURATION_S) throw new Error(`${name} must be between 1s and 3650d, not ${config[name]}`)
  }
  if (config.COOKIE_SAMESITE === 'none' && !config.COOKIE_SECURE) {
    throw new Error('COOKIE_SAMESITE=none requires COOKIE_SECURE=true')
  }
}

export default fp(configPlugin, { name: 'config' })
