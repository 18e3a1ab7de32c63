import type { User } from '../../schemas.ts'

/**
 * The columns of `users` a session's user is read with, and cached with on each replica: the
 * trigger users_notify (migration 0004) fires on a change of exactly these and is_active, and
 * test/session-cache.test.ts holds the two lists equal.
 */
export const SESSION_USER_COLUMNS = ['id', 'username', 'email', 'roles', 'email_verified_at'] as const

/** A user as the session routes, forward auth and introspection know them: with their roles, and when their address was verified. */
export interface UserWithRoles extends User { roles: string[], email_verified_at: Date | null }
