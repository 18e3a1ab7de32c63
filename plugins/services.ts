import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { createAccounts, type Accounts } from '../src/services/accounts.ts'
import { createSessions, type Sessions } from '../src/services/sessions.ts'

declare module 'fastify' {
  interface FastifyInstance {
    accounts: Accounts
    sessions: Sessions
  }
}

/** The domain services, each built once from what it needs; routes call their verbs. */
async function servicesPlugin (fastify: FastifyInstance): Promise<void> {
  const { config, db, keyring, clock } = fastify
  const sessions = createSessions({ db, keyring, clock, config })
  fastify.decorate('sessions', sessions)
  fastify.decorate('accounts', await createAccounts({ db, sessions, clock, config }))
}

export default fp(servicesPlugin, { name: 'services', dependencies: ['config', 'db', 'keys'] })
