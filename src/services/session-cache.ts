import { TtlCache } from '../lib/ttl-cache.ts'
import type { SessionUser } from './sessions.ts'

/**
 * The channel the database triggers of migrations 0004 and 0006 notify: `s:<session id>`,
 * `u:<user id>`, or `*` (a TRUNCATE: forget everything).
 */
export const SESSIONS_CHANNEL = 'authgate_sessions'

export interface SessionCacheOptions {
  /** How long an entry is trusted at most, notifications or not. */
  ttlMs?: number
  maxEntries?: number
  /** How long after the last heartbeat of the notification channel the cache is still used. */
  heartbeatTimeoutMs?: number
  now?: () => number
}

/**
 * The users of active sessions, by session id, read from PostgreSQL and kept while the
 * database says nothing has changed. Every revocation (authgate's own, or any SQL on `sessions`
 * or `users`, TRUNCATE included) reaches each replica through LISTEN/NOTIFY
 * (src/db/notifications.ts); the channel proves itself alive with a heartbeat every 250 ms, and
 * without one for `heartbeatTimeoutMs` the cache is not used, so a revocation is honoured on
 * every replica within that bound even if notifications are lost. What fires no trigger at all
 * (a trigger disabled by hand) is honoured once an entry is older than `ttlMs`. The sessions
 * service forgets what it revokes itself at once, before its answer is sent.
 */
export class SessionCache {
  readonly #entries: TtlCache<string, SessionUser>
  readonly #heartbeatTimeoutMs: number
  readonly #now: () => number
  #aliveUntil = 0
  // Bumped by every invalidation: a read that began before one is not stored after it.
  #generation = 0

  constructor ({ ttlMs = 5000, maxEntries = 100_000, heartbeatTimeoutMs = 1000, now = Date.now }: SessionCacheOptions = {}) {
    this.#entries = new TtlCache({ ttlMs, max: maxEntries, now })
    this.#heartbeatTimeoutMs = heartbeatTimeoutMs
    this.#now = now
  }

  get size (): number {
    return this.#entries.size
  }

  get generation (): number {
    return this.#generation
  }

  /** Whether the notification channel answered lately: only then is the cache read or filled. */
  get live (): boolean {
    return this.#now() < this.#aliveUntil
  }

  heartbeat (): void {
    this.#aliveUntil = this.#now() + this.#heartbeatTimeoutMs
  }

  get (sessionId: string, userId: number): SessionUser | undefined {
    if (!this.live) return undefined
    const user = this.#entries.get(sessionId)
    // A token naming another user for the session is not this one's: the database decides.
    return user?.id === userId ? user : undefined
  }

  /** Keeps a user read at `generation`, unless something was invalidated since. */
  set (user: SessionUser, generation: number): void {
    if (generation !== this.#generation || !this.live) return
    this.#entries.set(user.sessionId, user)
  }

  forgetSession (sessionId: string): void {
    this.#generation++
    this.#entries.delete(sessionId)
  }

  forgetUser (userId: number): void {
    this.#generation++
    this.#entries.deleteWhere((user) => user.id === userId)
  }

  forgetAll (): void {
    this.#generation++
    this.#entries.clear()
  }

  /** Forgets everything, and stays unused until the next heartbeat: what was missed is unknown. */
  clear (): void {
    this.forgetAll()
    this.#aliveUntil = 0
  }

  /** Applies a notification of SESSIONS_CHANNEL. */
  notified (payload: string): void {
    const [kind, id] = [payload.slice(0, 2), payload.slice(2)]
    if (kind === 's:') this.forgetSession(id)
    else if (kind === 'u:') this.forgetUser(Number(id))
    else this.forgetAll()
  }
}
