import { Type, type Static } from '@sinclair/typebox'

// Seconds ("300") or a number with a unit ("15m", "7d"), as the seed's settings accepted.
const Duration = (defaultValue: string) =>
  Type.String({ pattern: '^[0-9]{1,10}[smhd]?$', default: defaultValue })

/** The one configuration schema: read from the environment (or .env) by @fastify/env. */
export const ConfigSchema = Type.Object({
  NODE_ENV: Type.Union([Type.Literal('development'), Type.Literal('production'), Type.Literal('test')], { default: 'development' }),
  DEBUG: Type.Boolean({ default: false }),
  // Unset: 'debug' when DEBUG is true, 'info' otherwise.
  LOG_LEVEL: Type.Optional(Type.Union([
    Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'), Type.Literal('info'),
    Type.Literal('debug'), Type.Literal('trace'), Type.Literal('silent')
  ])),
  HOST: Type.String({ default: '127.0.0.1' }),
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  // Fastify's trustProxy: "true", a hop count, or addresses/CIDRs separated by commas; empty: off.
  TRUST_PROXY: Type.String({ default: '' }),

  SECRET_KEY: Type.Optional(Type.String({ minLength: 1 })),

  DB_ENGINE: Type.Union([Type.Literal('pglite'), Type.Literal('postgres')], { default: 'pglite' }),
  DB_NAME: Type.String({ minLength: 1, default: './data' }),
  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://' })),
  DB_POOL_MAX: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),

  JWT_ALGORITHM: Type.Union([Type.Literal('ES256'), Type.Literal('EdDSA'), Type.Literal('RS256'), Type.Literal('HS256')], { default: 'ES256' }),
  JWT_ISSUER: Type.String({ minLength: 1, default: 'authgate' }),
  JWT_AUDIENCE: Type.String({ minLength: 1, default: 'authgate' }),
  JWT_ACCESS_TOKEN_LIFETIME: Duration('5m'),
  JWT_REFRESH_TOKEN_LIFETIME: Duration('1d'),
  AUTH_SESSION_MAX_LIFETIME: Duration('30d'),
  AUTH_REUSE_GRACE_S: Type.Integer({ minimum: 0, maximum: 300, default: 10 }),

  BCRYPT_COST: Type.Integer({ minimum: 4, maximum: 15, default: 12 }),

  COOKIE_SECURE: Type.Boolean({ default: true }),
  COOKIE_SAMESITE: Type.Union([Type.Literal('lax'), Type.Literal('strict'), Type.Literal('none')], { default: 'lax' }),
  COOKIE_DOMAIN: Type.Optional(Type.String({ minLength: 1 }))
})

export type Config = Static<typeof ConfigSchema>
