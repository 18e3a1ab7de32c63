import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { AppOptions } from '../src/app.ts'
import { createServices, type Services } from '../src/services/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    keyring: Services['keyring']
    sessions: Services['sessions']
    accounts: Services['accounts']
    signIn: Services['signIn']
    mfa: Services['mfa']
    clients: Services['clients']
    admin: Services['admin']
    audit: Services['audit']
    oneTimeCodes: Services['oneTimeCodes']
    mailer: Services['mailer']
    outbox: Services['outbox']
    passwordReset: Services['passwordReset']
    emailVerification: Services['emailVerification']
  }
}

/**
 * The domain services, built by the one composition root (src/services/index.ts) from the
 * app's configuration, database, clock and logger, counted by its metrics; routes call their
 * verbs. Closed with the app: timers, the notification listener, the audit queue, the mailer.
 */
async function servicesPlugin (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  const { config, db, clock, log, counters } = fastify
  const services = await createServices({
    config,
    db,
    clock,
    log,
    onEvent: (event, outcome) => counters.events.inc({ event: event.event, outcome }),
    onIssue: () => {
      counters.tokensIssued.inc({ type: 'access' })
      counters.tokensIssued.inc({ type: 'refresh' })
    },
    onServiceToken: () => counters.tokensIssued.inc({ type: 'service' }),
    overrides: opts.overrides
  })
  fastify.addHook('onClose', () => services.close())
  fastify.decorate('keyring', services.keyring)
  fastify.decorate('sessions', services.sessions)
  fastify.decorate('accounts', services.accounts)
  fastify.decorate('signIn', services.signIn)
  fastify.decorate('mfa', services.mfa)
  fastify.decorate('clients', services.clients)
  fastify.decorate('admin', services.admin)
  fastify.decorate('audit', services.audit)
  fastify.decorate('oneTimeCodes', services.oneTimeCodes)
  fastify.decorate('mailer', services.mailer)
  fastify.decorate('outbox', services.outbox)
  fastify.decorate('passwordReset', services.passwordReset)
  fastify.decorate('emailVerification', services.emailVerification)
}

export default fp(servicesPlugin, { name: 'services', dependencies: ['config', 'db', 'metrics'] })
