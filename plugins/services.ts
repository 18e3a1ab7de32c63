import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { createAccounts, type Accounts } from '../src/services/accounts.ts'
import { listenForNotifications } from '../src/db/notifications.ts'
import { KEYS_CHANNEL } from '../src/services/keyring.ts'
import { cachedSessions, SESSIONS_CHANNEL, SessionCache } from '../src/services/session-cache.ts'
import { createSessions, type Sessions } from '../src/services/sessions.ts'

declare module 'fastify' {
  interface FastifyInstance {
    accounts: Accounts
    sessions: Sessions
  }
}

/**
 * The domain services, each built once from what it needs; routes call their verbs. On
 * PostgreSQL, the users of active sessions are cached, kept true by LISTEN/NOTIFY, which also
 * tells every replica of a key change at once; PGlite answers in the process, one process only,
 * with nothing to save.
 */
async function servicesPlugin (fastify: FastifyInstance): Promise<void> {
  const { config, db, keyring, clock, log, counters } = fastify
  const onIssue = (): void => {
    counters.tokensIssued.inc({ type: 'access' })
    counters.tokensIssued.inc({ type: 'refresh' })
  }
  let sessions = createSessions({ db, keyring, clock, config, onIssue })
  if (config.DB_ENGINE === 'postgres') {
    const cache = new SessionCache()
    const reloadKeys = (): void => {
      keyring.reload().catch((error: unknown) => log.warn({ err: error }, 'reloading the signing keys failed'))
    }
    const listener = listenForNotifications({
      listenUrl: config.DATABASE_LISTEN_URL ?? config.DATABASE_URL!,
      beatUrl: config.DATABASE_URL!,
      channels: { [SESSIONS_CHANNEL]: (payload) => cache.notified(payload), [KEYS_CHANNEL]: reloadKeys },
      onBeat: () => cache.heartbeat(),
      onLost: () => cache.clear(),
      warn: (message, error) => log.warn(error === undefined ? {} : { err: { message: error.message } }, message)
    })
    fastify.addHook('onClose', () => listener.close())
    sessions = cachedSessions(sessions, cache)
  }
  fastify.decorate('sessions', sessions)
  fastify.decorate('accounts', await createAccounts({ db, sessions, clock, config }))
}

export default fp(servicesPlugin, { name: 'services', dependencies: ['config', 'db', 'keys', 'metrics'] })
