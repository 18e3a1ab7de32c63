import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { durationToSeconds } from '../src/lib/duration.ts'
import { SecretBox } from '../src/lib/secret-box.ts'
import { ensureSigningKey, loadSigningKeys } from '../src/services/keys.ts'
import { Keyring } from '../src/services/tokens.ts'

declare module 'fastify' {
  interface FastifyInstance {
    keys: Keyring
  }
}

export interface KeysPluginOptions {
  /** The clock; tests move it instead of sleeping. */
  now?: () => Date
}

// Another replica may rotate the key: every replica picks up the newest one within this time.
const RELOAD_INTERVAL_MS = 60_000

/**
 * The signing keys: created on first start, loaded from `signing_keys`, published as the JWKS;
 * signing and verification with fast-jwt (https://github.com/nearform/fast-jwt).
 */
async function keysPlugin (fastify: FastifyInstance, opts: KeysPluginOptions): Promise<void> {
  const { config, db } = fastify
  const box = new SecretBox(config.SECRET_KEY, 'signing-keys')
  // A retired key verifies until the last token it signed has expired.
  const keepRetiredS = Math.max(durationToSeconds(config.JWT_ACCESS_TOKEN_LIFETIME), durationToSeconds(config.JWT_REFRESH_TOKEN_LIFETIME))
  await ensureSigningKey(db, box, config.JWT_ALGORITHM)
  const keys = new Keyring({
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
    load: () => loadSigningKeys(db, box, keepRetiredS),
    now: opts.now
  })
  await keys.reload()
  const timer = setInterval(() => {
    keys.reload().catch((error: unknown) => fastify.log.warn({ err: error }, 'reloading the signing keys failed'))
  }, RELOAD_INTERVAL_MS).unref()
  fastify.addHook('onClose', async () => { clearInterval(timer) })
  fastify.decorate('keys', keys)
}

export default fp(keysPlugin, { name: 'keys', dependencies: ['config', 'db'] })
