import { sql, type Insertable } from 'kysely'
import type { Db } from '../db/index.ts'
import type { AuditEventsTable } from '../db/types.ts'
import { seconds, type Clock } from '../lib/clock.ts'
import type { Logger } from '../lib/logger.ts'

/** Who opened a session, or did anything else the trail records: shown in the session list, logged. */
export interface Device { userAgent: string | null, ip: string | null }

/** Who asks a service for something: the device (its user agent and address), and where the events it causes are logged (the request's logger). */
export interface Caller { device: Device, log?: Logger }

/** The events of the trail; each a stable name, forever. */
export type AuditEventName = 'register' | 'login' | 'refresh' | 'reuse_detected' | 'logout' | 'password_changed' | 'session_revoked' | 'key_rotated'
  | 'client_created' | 'client_secret_rotated' | 'client_disabled' | 'client_enabled' | 'client_updated' | 'token_exchanged' | 'workload_token_issued'
  | 'password_reset_requested' | 'password_reset' | 'email_verification_requested' | 'email_verified' | 'email_sign_in_requested' | 'address_proven'
  | 'admin_read' | 'user_disabled' | 'user_enabled' | 'user_deleted' | 'user_sessions_ended' | 'user_roles_changed' | 'user_password_reset_mailed' | 'user_mfa_reset'
  | 'mfa_factor_added' | 'mfa_factor_verified' | 'mfa_factor_removed' | 'mfa_verify' | 'recovery_code_used' | 'recovery_codes_regenerated'
  | 'identity_linked' | 'identity_unlinked' | 'passkey_added' | 'passkey_renamed' | 'passkey_removed' | 'passkey_counter_regressed'

/** A security event, as the service that saw it tells it. */
export interface AuditEvent {
  event: AuditEventName
  /** Success unless said otherwise. */
  outcome?: 'success' | 'failure'
  userId?: number | null
  sessionId?: string | null
  /** The username or email given, when no user is known (a failed login). */
  identifier?: string
  detail?: Record<string, unknown>
}

export interface AuditTrailDeps {
  db: Db
  clock: Clock
  /** Where events are logged when the caller brings no logger; and what could not be written. */
  log: Logger
  /** Hears of every event (the metrics' counters). */
  onEvent?: (event: AuditEvent, outcome: 'success' | 'failure') => void
}

// Events wait at most this long, or until this many wait, before one insert writes them all.
const FLUSH_DELAY_MS = 50
const BATCH = 500
// While the database is away the oldest events give way: memory stays bounded.
const MAX_WAITING = 10_000
const MAX_TEXT = 512

/**
 * Client-written text (an identifier tried, a user agent) as the trail keeps it: at most 512
 * characters, control characters written out as \u escapes, so that reading the table in a
 * terminal never runs what an attacker typed.
 */
const clip = (value: string | null | undefined): string | null => value == null
  ? null
  : value.slice(0, MAX_TEXT).replace(/\p{Cc}/gu, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)

/**
 * The audit trail (`audit_events`). `record` only queues, so a request never waits on it: the
 * queue is written in batches, one multi-row insert at most every 50 ms, and flushed when the
 * services close. A crash loses at most the events of the last 50 ms. Each event is also
 * counted and logged, one line, with the caller's logger.
 */
export function createAuditTrail ({ db, clock, log, onEvent }: AuditTrailDeps) {
  let waiting: Array<Insertable<AuditEventsTable>> = []
  let timer: NodeJS.Timeout | undefined
  let writing = Promise.resolve()
  const dropped = (error: unknown, count: number): void => log.warn({ err: error, count }, 'audit events could not be written')

  async function writeEach (batch: Array<Insertable<AuditEventsTable>>): Promise<void> {
    for (const event of batch) {
      try {
        await db.insertInto('audit_events').values(event).execute()
      } catch (error) {
        dropped(error, 1)
      }
    }
  }

  async function write (): Promise<void> {
    while (waiting.length > 0) {
      const batch = waiting.slice(0, BATCH)
      waiting = waiting.slice(BATCH)
      try {
        await db.insertInto('audit_events').values(batch).execute()
      } catch (error) {
        // One event the table refuses (PostgreSQL's data and constraint errors, classes 22 and
        // 23) must not take the others with it: those are written one at a time.
        if (batch.length > 1 && /^2[23]/.test(String((error as { code?: unknown }).code))) await writeEach(batch)
        else dropped(error, batch.length)
      }
    }
  }

  // Never rejects: write reports its failures.
  function flush (): Promise<void> {
    clearTimeout(timer)
    timer = undefined
    writing = writing.then(write)
    return writing
  }

  return {
    /** Queues the event of `caller` for the table, counts it, and logs it. */
    record (event: AuditEvent, caller?: Caller): void {
      const outcome = event.outcome ?? 'success'
      waiting.push({
        at: clock.now(),
        event: event.event,
        outcome,
        user_id: event.userId ?? null,
        session_id: event.sessionId ?? null,
        identifier: clip(event.identifier),
        ip: clip(caller?.device.ip),
        user_agent: clip(caller?.device.userAgent),
        detail: event.detail === undefined ? null : JSON.stringify(event.detail)
      })
      if (waiting.length > MAX_WAITING) dropped(new Error('the audit queue is full'), waiting.splice(0, waiting.length - MAX_WAITING).length)
      if (waiting.length >= BATCH) flush().catch(() => {})
      else timer ??= setTimeout(() => { flush().catch(() => {}) }, FLUSH_DELAY_MS)
      onEvent?.(event, outcome)
      const level = outcome === 'failure' || event.event === 'reuse_detected' ? 'warn' : 'info'
      ;(caller?.log ?? log)[level]({ event: event.event, outcome, userId: event.userId, sessionId: event.sessionId, ...event.detail }, event.event)
    },

    /** Writes every queued event; resolves when they are written (or reported dropped). */
    flush,

    /** Deletes events older than `retentionS`, in batches; the number deleted. */
    async prune (retentionS: number): Promise<number> {
      let deleted = 0
      for (;;) {
        const result = await db.deleteFrom('audit_events')
          .where('id', 'in', (eb) => eb.selectFrom('audit_events').select('id')
            .where('at', '<', sql<Date>`${clock.db()} - ${seconds(retentionS)}`).limit(BATCH * 2))
          .executeTakeFirst()
        deleted += Number(result.numDeletedRows)
        if (result.numDeletedRows < BigInt(BATCH * 2)) return deleted
      }
    }
  }
}

export type AuditTrail = ReturnType<typeof createAuditTrail>
