import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { listenForNotifications } from '../db/notifications.ts'
import { systemClock, type Clock } from '../lib/clock.ts'
import type { Logger } from '../lib/logger.ts'
import { loadMailTemplates } from './mail/templates.ts'
import { NotifiedCache } from '../lib/notified-cache.ts'
import { createAccounts } from './accounts/accounts.ts'
import { createAddresses } from './accounts/addresses.ts'
import { createAdmin } from './admin.ts'
import { createAuditTrail, type AuditEvent } from './audit.ts'
import { createAuth } from './auth/auth.ts'
import { createCleanup } from './cleanup.ts'
import { createClients, type CachedClient } from './oauth/clients.ts'
import { createExchange } from './oauth/exchange.ts'
import { createGrants } from './oauth/grants.ts'
import { createWorkloads } from './oauth/workloads.ts'
import { createDjangoImport } from './accounts/django-import.ts'
import { createKeyring, KEYS_CHANNEL } from './keys/keyring.ts'
import { createMailer, type Mailer } from './mail/mailer.ts'
import { createOneTimeCodes } from './one-time-codes.ts'
import { createEmailVerification } from './email-verification.ts'
import { createOutbox } from './mail/outbox.ts'
import { createPasswordReset } from './password-reset.ts'
import { createMfa } from './mfa/mfa.ts'
import { SESSIONS_CHANNEL, SessionCache } from './sessions/cache.ts'
import { createSessions } from './sessions/sessions.ts'
import { createSignIn } from './sign-in.ts'
import { createSigningKeys, KEYS_RELOAD_INTERVAL_S } from './keys/signing-keys.ts'
import { createPasskeys } from './passkeys/passkeys.ts'
import { createUpstream } from './upstream/upstream.ts'

/** What the services are built from. */
export interface ServicesDeps {
  config: Config
  db: Db
  clock?: Clock
  log: Logger
  /** Hear of what the metrics count: security events, token pairs issued. */
  onEvent?: (event: AuditEvent, outcome: 'success' | 'failure') => void
  onIssue?: () => void
  /** Hear of each service token issued (client credentials). */
  onServiceToken?: () => void
  /**
   * The service's own timers and connections: the pruning round, the key reloads, the
   * notification listener that keeps each replica's caches true. A command (src/cli.ts) runs without.
   */
  background?: boolean
  /** Parts put in place of the built ones: a test's mailer or clock. */
  overrides?: {
    mailer?: Mailer
    /**
     * A replica's caches (PostgreSQL): a test gives them a clock it holds, so that a refusal it
     * sees can be explained by nothing but a notification, and it reads what they keep.
     */
    sessionCache?: SessionCache
    clientCache?: NotifiedCache<CachedClient>
    /** Seconds between the key reloads behind the notification (a minute): a test lengthens them for the same reason. */
    keysReloadIntervalS?: number
  }
}

/**
 * The composition root: every service built once from what it needs, in one place, for the
 * server (plugins/services.ts), the CLI and the tests alike; `close()` stops what they started.
 * Each service is a factory taking its dependencies once and returning its verbs.
 */
export async function createServices (deps: ServicesDeps) {
  const { config, db, log, background = true } = deps
  const clock = deps.clock ?? systemClock
  const closers: Array<() => Promise<void>> = []
  const every = (seconds: number, work: () => Promise<unknown>): void => {
    let running: Promise<unknown> | undefined
    const timer = setInterval(() => { running ??= work().finally(() => { running = undefined }) }, seconds * 1000).unref()
    closers.push(async () => {
      clearInterval(timer)
      await running
    })
  }

  const audit = createAuditTrail({ db, clock, log, onEvent: deps.onEvent })
  const signingKeys = createSigningKeys({ db, config, clock, audit })
  const keyring = createKeyring({ issuer: config.JWT_ISSUER, audience: config.JWT_AUDIENCE, clientId: config.OAUTH_FIRST_PARTY_CLIENT_ID, secret: config.SECRET_KEY, load: signingKeys.load, clock })
  const reloadKeys = async (): Promise<void> => {
    await keyring.reload().catch((error: unknown) => log.warn({ err: error }, 'reloading the signing keys failed'))
  }

  // Whether the start's own reading of the keys has begun.
  let keysRead = false

  // On PostgreSQL the users of active sessions and the service clients are cached on each
  // replica, kept true by LISTEN/NOTIFY, which also tells every replica of a key change at once;
  // PGlite answers in the process, one process only, with nothing to save.
  let cache: SessionCache | undefined
  let clientCache: NotifiedCache<CachedClient> | undefined
  if (background && config.DB_ENGINE === 'postgres') {
    const caches = { sessions: deps.overrides?.sessionCache ?? new SessionCache(), clients: deps.overrides?.clientCache ?? new NotifiedCache<CachedClient>() }
    cache = caches.sessions
    clientCache = caches.clients
    const notified = (payload: string): void => {
      if (payload.startsWith('c:')) {
        caches.clients.forget(payload.slice(2))
        return
      }
      if (payload === '*') caches.clients.forgetAll()
      caches.sessions.notified(payload)
    }
    const listener = listenForNotifications({
      listenUrl: config.DATABASE_LISTEN_URL ?? config.DATABASE_URL!,
      beatUrl: config.DATABASE_URL!,
      channels: { [SESSIONS_CHANNEL]: notified, [KEYS_CHANNEL]: () => { reloadKeys().catch(() => {}) } },
      // A rotation committed before the LISTEN (between the start's reading and it, or while the
      // listener was lost) was notified to no one here: read the keys once more. A LISTEN before
      // the start's reading needs none: that reading comes after it (and a first start's key may
      // not be made yet).
      onListening: () => { if (keysRead) reloadKeys().catch(() => {}) },
      onBeat: () => {
        caches.sessions.heartbeat()
        caches.clients.heartbeat()
      },
      onLost: () => {
        caches.sessions.clear()
        caches.clients.clear()
      },
      warn: (message, error) => log.warn(error === undefined ? {} : { err: { message: error.message } }, message)
    })
    closers.push(() => listener.close())
  }

  const sessions = createSessions({ db, keyring, clock, config, audit, cache, onIssue: deps.onIssue })
  const accounts = await createAccounts({ db, sessions, clock, config, audit })
  const clients = createClients({ db, clock, keyring, config, audit, cache: clientCache, onIssue: deps.onServiceToken })
  const auth = createAuth({ config, keyring, clock, sessions, clients })
  const exchange = createExchange({ clock, keyring, auth, clients, audit })
  const workloads = createWorkloads({ clients, clock, audit })
  const grants = createGrants({ clock, auth, sessions, clients, exchange, workloads })
  const cleanup = createCleanup({ db, config, clock, audit, log })
  const templates = loadMailTemplates(config.MAIL_TEMPLATES_DIR)
  const oneTimeCodes = createOneTimeCodes({ db, clock, config, templates })
  const mailer = deps.overrides?.mailer ?? await createMailer({ config, log })
  const outbox = createOutbox({ db, clock, config, mailer, log })
  const mfa = createMfa({ db, clock, config, sessions, oneTimeCodes, outbox, templates, audit })
  const addresses = createAddresses({ clock, sessions, mfa, outbox, templates, audit })
  const signIn = createSignIn({ db, clock, config, accounts, sessions, oneTimeCodes, outbox, audit, mfa, addresses })
  const emailVerification = createEmailVerification({ config, sessions, oneTimeCodes, outbox, audit, accounts, addresses })
  const passwordReset = createPasswordReset({ db, clock, config, accounts, sessions, oneTimeCodes, outbox, templates, audit, mfa, addresses })
  const upstream = createUpstream({ db, clock, config, oneTimeCodes, signIn, sessions, outbox, templates, audit })
  const passkeys = createPasskeys({ db, clock, config, oneTimeCodes, signIn, mfa, outbox, templates, audit })
  const admin = createAdmin({ db, clock, sessions, oneTimeCodes, audit, passwordReset, mfa, passkeys, config })
  const djangoImport = createDjangoImport({ db })

  if (background) {
    await signingKeys.ensure()
    keysRead = true
    await keyring.reload()
    every(deps.overrides?.keysReloadIntervalS ?? KEYS_RELOAD_INTERVAL_S, reloadKeys)
    every(config.pruneIntervalS, () => cleanup.prune())
    // Mail queued by any replica (and retries while SMTP is down); this replica's own is sent at once.
    every(1, () => outbox.work())
    closers.push(() => outbox.idle())
  }

  return {
    config,
    clock,
    audit,
    signingKeys,
    keyring,
    sessions,
    accounts,
    signIn,
    upstream,
    passkeys,
    mfa,
    admin,
    clients,
    auth,
    grants,
    cleanup,
    oneTimeCodes,
    mailer,
    outbox,
    passwordReset,
    emailVerification,
    djangoImport,
    /** Stops the timers and the listener, writes the audit events still queued, closes the mailer. */
    async close (): Promise<void> {
      await Promise.all(closers.map((close) => close()))
      await audit.flush()
      await mailer.close()
    }
  }
}

export type Services = Awaited<ReturnType<typeof createServices>>
