import type { SessionUser, Sessions } from './sessions.ts'
import type { TokenClaims } from './tokens.ts'

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
 * (a trigger disabled by hand) is honoured once an entry is older than `ttlMs`.
 * Revocations made here are forgotten at once, before their answer is sent.
 */
export class SessionCache {
  readonly #entries = new Map<string, { user: SessionUser, at: number }>()
  readonly #ttlMs: number
  readonly #maxEntries: number
  readonly #heartbeatTimeoutMs: number
  readonly #now: () => number
  #aliveUntil = 0
  // Bumped by every invalidation: a read that began before one is not stored after it.
  #generation = 0

  constructor ({ ttlMs = 5000, maxEntries = 100_000, heartbeatTimeoutMs = 1000, now = Date.now }: SessionCacheOptions = {}) {
    this.#ttlMs = ttlMs
    this.#maxEntries = maxEntries
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
    const entry = this.#entries.get(sessionId)
    if (entry === undefined) return undefined
    if (this.#now() - entry.at > this.#ttlMs) {
      this.#entries.delete(sessionId)
      return undefined
    }
    // A token naming another user for the session is not this one's: the database decides.
    return entry.user.id === userId ? entry.user : undefined
  }

  /** Keeps a user read at `generation`, unless something was invalidated since. */
  set (user: SessionUser, generation: number): void {
    if (generation !== this.#generation || !this.live) return
    if (this.#entries.size >= this.#maxEntries) this.#entries.delete(this.#entries.keys().next().value!)
    this.#entries.set(user.sessionId, { user, at: this.#now() })
  }

  forgetSession (sessionId: string): void {
    this.#generation++
    this.#entries.delete(sessionId)
  }

  forgetUser (userId: number): void {
    this.#generation++
    for (const [sessionId, entry] of this.#entries) if (entry.user.id === userId) this.#entries.delete(sessionId)
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

/**
 * The sessions service with the cache in front of `userOf` (every request of an access token)
 * and of `liveUser` for access tokens; whatever it revokes, it forgets at once.
 */
export function cachedSessions (sessions: Sessions, cache: SessionCache): Sessions {
  const read = async (claims: TokenClaims): Promise<SessionUser | undefined> => {
    const cached = cache.get(claims.sid, claims.user_id)
    if (cached !== undefined) return cached
    const generation = cache.generation
    const user = await sessions.userOf(claims)
    if (user !== undefined) cache.set(user, generation)
    return user
  }
  return {
    ...sessions,
    userOf: read,
    async liveUser (claims) {
      if (claims.token_type !== 'access') return await sessions.liveUser(claims)
      const user = await read(claims)
      return user === undefined ? undefined : { id: user.id, username: user.username, email: user.email }
    },
    async refresh (claims) {
      const outcome = await sessions.refresh(claims)
      if (outcome.kind === 'reused') cache.forgetSession(claims.sid)
      return outcome
    },
    async revoke (userId, sessionId, scope, executor) {
      const forget = (): void => { if (scope === 'current') cache.forgetSession(sessionId); else cache.forgetUser(userId) }
      return await forgetting(forget, () => sessions.revoke(userId, sessionId, scope, executor))
    },
    async revokeById (userId, sessionId) {
      return await forgetting(() => cache.forgetSession(sessionId), () => sessions.revokeById(userId, sessionId))
    },
    async revokeByRefreshToken (claims) {
      return await forgetting(() => cache.forgetSession(claims.sid), () => sessions.revokeByRefreshToken(claims))
    }
  }
}

// Before the revocation, and after it: a read that raced it and kept the old state is dropped.
async function forgetting<T> (forget: () => void, revoke: () => Promise<T>): Promise<T> {
  forget()
  try {
    return await revoke()
  } finally {
    forget()
  }
}
