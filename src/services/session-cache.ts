import pg from 'pg'
import { randomUUID } from 'node:crypto'
import type { SessionUser, Sessions } from './sessions.ts'
import type { TokenClaims } from './tokens.ts'

/** The channel the database triggers of migration 0004 notify: `s:<session id>` or `u:<user id>`. */
const CHANNEL = 'authgate_sessions'

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
 * or `users`) reaches each replica through LISTEN/NOTIFY; the channel proves itself alive with
 * a heartbeat every 250 ms, and without one for `heartbeatTimeoutMs` the cache is not used,
 * so a revocation is honoured on every replica within that bound even if notifications are lost.
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

  constructor ({ ttlMs = 60_000, maxEntries = 100_000, heartbeatTimeoutMs = 1000, now = Date.now }: SessionCacheOptions = {}) {
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

  clear (): void {
    this.#generation++
    this.#aliveUntil = 0
    this.#entries.clear()
  }

  /** Applies a notification of CHANNEL. */
  notified (payload: string): void {
    const [kind, id] = [payload.slice(0, 2), payload.slice(2)]
    if (kind === 's:') this.forgetSession(id)
    else if (kind === 'u:') this.forgetUser(Number(id))
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

export interface RevocationListener { close: () => Promise<void> }

const HEARTBEAT_MS = 250
const RECONNECT_MS = { first: 250, last: 5000 } as const

/**
 * Listens on CHANNEL on a connection of its own, and sends itself a heartbeat every 250 ms.
 * When the connection fails, the cache is cleared (what was missed is unknown) and stays
 * unused until a new connection has heard its own heartbeat.
 */
export function listenForRevocations (url: string, cache: SessionCache, onError: (error: Error) => void): RevocationListener {
  const beat = `hb:${randomUUID()}`
  let client: pg.Client | undefined
  let closed = false
  let timer: NodeJS.Timeout | undefined
  let wait: number = RECONNECT_MS.first

  const connect = async (): Promise<void> => {
    const current = new pg.Client({ connectionString: url, application_name: 'authgate-listener', connectionTimeoutMillis: 3000, keepAlive: true })
    client = current
    const lost = (error: Error): void => {
      if (client !== current) return
      client = undefined
      cache.clear()
      clearInterval(timer)
      current.end().catch(() => {})
      if (closed) return
      onError(error)
      setTimeout(() => { connect().catch(() => {}) }, wait).unref()
      wait = Math.min(wait * 2, RECONNECT_MS.last)
    }
    current.on('error', lost)
    current.on('end', () => lost(new Error('the listener connection ended')))
    current.on('notification', ({ payload = '' }) => {
      if (payload === beat) cache.heartbeat()
      else cache.notified(payload)
    })
    try {
      await current.connect()
      await current.query(`listen ${CHANNEL}`)
    } catch (error) {
      lost(error as Error)
      return
    }
    wait = RECONNECT_MS.first
    const send = (): void => { current.query('select pg_notify($1, $2)', [CHANNEL, beat]).catch(lost) }
    send()
    timer = setInterval(send, HEARTBEAT_MS).unref()
  }
  connect().catch(() => {})

  return {
    async close () {
      closed = true
      clearInterval(timer)
      const current = client
      client = undefined
      cache.clear()
      await current?.end().catch(() => {})
    }
  }
}
