import fastifyEnv from '@fastify/env'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ConfigSchema, type Config } from '../src/config.ts'

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
  await fastify.register(fastifyEnv, { schema: ConfigSchema, data: opts.env ?? process.env, dotenv: opts.env === undefined })
  const config = fastify.config as Config
  if (config.SECRET_KEY === undefined) {
    if (config.NODE_ENV === 'production') throw new Error('SECRET_KEY is required when NODE_ENV=production')
    config.SECRET_KEY = await developmentSecret(fastify, config)
  } else if (config.NODE_ENV === 'production' && config.SECRET_KEY.length < MIN_SECRET_LENGTH) {
    throw new Error(`SECRET_KEY must be at least ${MIN_SECRET_LENGTH} characters when NODE_ENV=production`)
  }
  if (config.DB_ENGINE === 'postgres' && config.DATABASE_URL === undefined) {
    throw new Error('DATABASE_URL is required when DB_ENGINE=postgres')
  }
  if (config.COOKIE_SAMESITE === 'none' && !config.COOKIE_SECURE) {
    throw new Error('COOKIE_SAMESITE=none requires COOKIE_SECURE=true')
  }
}

export default fp(configPlugin, { name: 'config' })
