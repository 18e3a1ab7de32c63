import { NotifiedCache } from '../../lib/notified-cache.ts'
import type { UserWithRoles } from '../accounts/users.ts'

/** The user of an active session, and the session. */
export interface SessionUser extends UserWithRoles { sessionId: string }

/**
 * The channel the database triggers notify: `s:<session id>`, `u:<user id>` (migrations 0004
 * and 0006), `c:<client id>` (0008), or `*` (a TRUNCATE: forget everything).
 */
export const SESSIONS_CHANNEL = 'authgate_sessions'

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
export class SessionCache extends NotifiedCache<SessionUser> {
  /** The user of a session, if kept and the token names that user: another user id is for the database to judge. */
  of (sessionId: string, userId: number): SessionUser | undefined {
    const user = this.get(sessionId)
    return user?.id === userId ? user : undefined
  }

  keep (user: SessionUser, generation: number): void {
    this.set(user.sessionId, user, generation)
  }

  forgetUser (userId: number): void {
    this.forgetWhere((user) => user.id === userId)
  }

  /** Applies a notification of SESSIONS_CHANNEL about sessions (`s:`), users (`u:`) or everything (`*`). */
  notified (payload: string): void {
    const [kind, id] = [payload.slice(0, 2), payload.slice(2)]
    if (kind === 's:') this.forget(id)
    else if (kind === 'u:') this.forgetUser(Number(id))
    else this.forgetAll()
  }
}
