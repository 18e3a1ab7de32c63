import { sql, type Insertable } from 'kysely'
import type { Db } from '../db/index.ts'
import type { AuditEventsTable } from '../db/types.ts'
import { seconds, type Clock } from '../lib/clock.ts'
import type { Client } from './sessions.ts'

/** A security event, as the code that saw it tells it. */
export interface AuditEvent {
  event: 'register' | 'login' | 'refresh' | 'reuse_detected' | 'logout' | 'password_changed' | 'session_revoked' | 'key_rotated'
  /** Success unless said otherwise. */
  outcome?: 'success' | 'failure'
  userId?: number | null
  sessionId?: string | null
  /** The username or email given, when no user is known (a failed login). */
  identifier?: string
  client?: Client
  detail?: Record<string, unknown>
}

export interface AuditTrailOptions {
  db: Db
  clock: Clock
  /** Hears of events that could not be written, and how many. */
  onDropped: (error: unknown, count: number) => void
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
 * app closes. A crash loses at most the events of the last 50 ms.
 */
export function createAuditTrail ({ db, clock, onDropped }: AuditTrailOptions) {
  let waiting: Array<Insertable<AuditEventsTable>> = []
  let timer: NodeJS.Timeout | undefined
  let writing = Promise.resolve()

  async function write (): Promise<void> {
    while (waiting.length > 0) {
      const batch = waiting.slice(0, BATCH)
      waiting = waiting.slice(BATCH)
      try {
        await db.insertInto('audit_events').values(batch).execute()
      } catch (error) {
        onDropped(error, batch.length)
      }
    }
  }

  // Never rejects: write reports its failures to onDropped.
  function flush (): Promise<void> {
    clearTimeout(timer)
    timer = undefined
    writing = writing.then(write)
    return writing
  }

  return {
    record (event: AuditEvent): void {
      waiting.push({
        at: clock.now(),
        event: event.event,
        outcome: event.outcome ?? 'success',
        user_id: event.userId ?? null,
        session_id: event.sessionId ?? null,
        identifier: clip(event.identifier),
        ip: clip(event.client?.ip),
        user_agent: clip(event.client?.userAgent),
        detail: event.detail === undefined ? null : JSON.stringify(event.detail)
      })
      if (waiting.length > MAX_WAITING) onDropped(new Error('the audit queue is full'), waiting.splice(0, waiting.length - MAX_WAITING).length)
      if (waiting.length >= BATCH) flush().catch(() => {})
      else timer ??= setTimeout(() => { flush().catch(() => {}) }, FLUSH_DELAY_MS)
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
