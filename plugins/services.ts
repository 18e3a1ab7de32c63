import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { AppOptions } from '../src/app.ts'
import { createServices, type Services } from '../src/services/index.ts'

// The services routes call, decorated under their own names.
const DECORATED = [
  'keyring', 'sessions', 'accounts', 'signIn', 'mfa', 'clients', 'auth', 'admin', 'audit', 'oneTimeCodes', 'mailer', 'outbox',
  'passwordReset', 'emailVerification', 'upstream', 'passkeys', 'grants'
] as const satisfies ReadonlyArray<keyof Services>
type Decorated = Pick<Services, typeof DECORATED[number]>

declare module 'fastify' {
  interface FastifyInstance extends Decorated {}
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
  for (const name of DECORATED) fastify.decorate<object>(name as string, services[name])
}

export default fp(servicesPlugin, { name: 'services', dependencies: ['config', 'db', 'metrics'] })
