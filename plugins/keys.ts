import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { SecretBox } from '../src/lib/secret-box.ts'
import { Keyring } from '../src/services/keyring.ts'
import type { Algorithm } from '../src/config.ts'
import { ensureSigningKey, keyFromPem, loadSigningKeys } from '../src/services/signing-keys.ts'

declare module 'fastify' {
  interface FastifyInstance {
    keyring: Keyring
  }
}

// Another replica, or keys:rotate, may change the keys: on PostgreSQL every replica hears of it
// at once (plugins/services.ts); should the notification be lost, within this time.
const RELOAD_INTERVAL_S = 60
// Replica clocks may disagree by this much.
const CLOCK_SKEW_S = 30

/**
 * The signing keys: created on first start, loaded from `signing_keys`, published as the JWKS,
 * reloaded each minute and on an unknown kid (https://github.com/nearform/fast-jwt).
 */
async function keysPlugin (fastify: FastifyInstance): Promise<void> {
  const { config, db, clock } = fastify
  const box = new SecretBox(config.SECRET_KEY, 'signing-keys')
  // A retired key verifies until the last access token it signed has expired (refresh tokens
  // are signed with a key of their own), counting a replica that did not hear of the rotation
  // and kept signing with it until its next reload.
  const keepRetiredS = config.accessTtlS + RELOAD_INTERVAL_S + CLOCK_SKEW_S
  // An operator's PEM replaces the database's keys; parseConfig checked it fits JWT_ALGORITHM.
  const pem = config.JWT_PRIVATE_KEY
  if (pem === undefined) await ensureSigningKey(db, box, config.JWT_ALGORITHM)
  const keyring = new Keyring({
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
    secret: config.SECRET_KEY,
    load: pem === undefined
      ? () => loadSigningKeys(db, box, keepRetiredS, clock.now())
      : async () => [keyFromPem(pem, config.JWT_ALGORITHM as Exclude<Algorithm, 'HS256'>)],
    clock
  })
  await keyring.reload()
  const timer = setInterval(() => {
    keyring.reload().catch((error: unknown) => fastify.log.warn({ err: error }, 'reloading the signing keys failed'))
  }, RELOAD_INTERVAL_S * 1000).unref()
  fastify.addHook('onClose', async () => { clearInterval(timer) })
  fastify.decorate('keyring', keyring)
}

export default fp(keysPlugin, { name: 'keys', dependencies: ['config', 'db'] })
