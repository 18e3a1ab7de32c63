import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { createAccounts, type Accounts } from '../src/services/accounts.ts'
import { cachedSessions, listenForRevocations, SessionCache } from '../src/services/session-cache.ts'
import { createSessions, type Sessions } from '../src/services/sessions.ts'

declare module 'fastify' {
  interface FastifyInstance {
    accounts: Accounts
    sessions: Sessions
  }
}

/**
 * The domain services, each built once from what it needs; routes call their verbs. On
 * PostgreSQL, the users of active sessions are cached, kept true by LISTEN/NOTIFY; PGlite
 * answers in the process, with nothing to save.
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
    const listener = listenForRevocations(config.DATABASE_URL!, cache, (error) => log.warn({ err: { message: error.message } }, 'session notifications lost; the session cache is off until they resume'))
    fastify.addHook('onClose', () => listener.close())
    sessions = cachedSessions(sessions, cache)
  }
  fastify.decorate('sessions', sessions)
  fastify.decorate('accounts', await createAccounts({ db, sessions, clock, config }))
}

export default fp(servicesPlugin, { name: 'services', dependencies: ['config', 'db', 'keys', 'metrics'] })
