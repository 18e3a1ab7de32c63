import { sql, type Selectable } from 'kysely'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import type { AuditEventsTable } from '../db/types.ts'
import { InvalidCursorError, MailLimitReachedError, NotFoundError, PasskeyNotFoundError, UserDeletedError, UserDisabledError, UserNotFoundError, ValidationFailedError } from '../errors.ts'
import type { Clock } from '../lib/clock.ts'
import { deleteUser, disable, enable, operatorViewOf, scrub, searchForOperator, setRoles } from './accounts/users.ts'
import type { AuditEventName, AuditTrail, Caller } from './audit.ts'
import type { PasswordReset } from './password-reset.ts'
import type { Mfa } from './mfa/mfa.ts'
import type { OneTimeCodes } from './one-time-codes.ts'
import { deletePasskeysOf } from './passkeys/credentials.ts'
import type { Passkeys } from './passkeys/passkeys.ts'
import type { SessionInfo, Sessions } from './sessions/sessions.ts'
import { identitiesOf } from './upstream/identities.ts'

/** Who calls the admin API: the service client its token is of, and the request. */
export interface Operator { clientId: string, caller: Caller }

export type UserStatus = 'active' | 'disabled' | 'deleted'

/** A user as operators see them. */
export interface AdminUser {
  id: number
  username: string
  email: string
  status: UserStatus
  roles: string[]
  created_at: Date
  last_login_at: Date | null
  disabled_reason: string | null
  disabled_until: Date | null
  deleted_at: Date | null
}

/** An audit event as operators read it. */
export type AuditRecord = Selectable<AuditEventsTable>

/** One page of a keyset-paginated list: `next_cursor` names where the next page starts, null after the last. */
export interface Page<T> { items: T[], next_cursor: string | null }

export interface AdminDeps {
  db: Db
  clock: Clock
  sessions: Sessions
  oneTimeCodes: OneTimeCodes
  audit: AuditTrail
  passwordReset: PasswordReset
  mfa: Mfa
  passkeys: Passkeys
  config: Pick<Config, 'roles'>
}

type UserRow = { id: number, username: string, email: string, is_active: boolean, roles: string[], created_at: Date, last_login_at: Date | null, disabled_reason: string | null, disabled_until: Date | null, deleted_at: Date | null }

const toUser = ({ is_active: active, ...row }: UserRow): AdminUser => ({ ...row, status: row.deleted_at !== null ? 'deleted' : active ? 'active' : 'disabled' })

// The largest id a user can have (a PostgreSQL integer): a larger one names nobody.
const INT4_MAX = 2_147_483_647

// A cursor is the last id of a page, opaque to clients: base64url of JSON.
const cursorOf = (id: string | number): string => Buffer.from(JSON.stringify({ id: String(id) })).toString('base64url')
function idOfCursor (cursor: string | undefined): string | undefined {
  if (cursor === undefined) return undefined
  try {
    const { id } = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as { id?: unknown }
    if (typeof id === 'string' && /^[0-9]{1,19}$/.test(id)) return id
  } catch {}
  throw new InvalidCursorError()
}

function page<T> (rows: T[], limit: number, idOf: (row: T) => string | number): Page<T> {
  const items = rows.slice(0, limit)
  return { items, next_cursor: rows.length > limit ? cursorOf(idOf(items.at(-1)!)) : null }
}

// What a soft delete leaves of the name and address: never one a registration could take
// (a colon is in no username or address authgate accepts), unique by the id.
const scrubbed = (id: number) => ({ username: `deleted:${id}`, email: `deleted:${id}@deleted.invalid` })

/**
 * The operators' verbs (the admin API): find users and read them, disable, enable and delete
 * them, end their sessions, give them roles, read the audit trail. A change of a user ends or
 * forgets what the replicas cached of them in the same transaction as the change (the users
 * and sessions triggers notify every replica on commit; this one forgets after the commit). Every
 * call, reads too, is in the audit trail with the calling client and the reason given.
 */
export function createAdmin ({ db, clock, sessions, oneTimeCodes, audit, passwordReset, mfa, passkeys, config }: AdminDeps) {
  const record = (event: AuditEventName, operator: Operator, userId: number | null, detail: Record<string, unknown> = {}): void => {
    audit.record({ event, userId, detail: { client_id: operator.clientId, ...detail } }, operator.caller)
  }

  async function find (id: number): Promise<AdminUser> {
    const row = id > INT4_MAX ? undefined : await operatorViewOf(db, id)
    if (row === undefined) throw new UserNotFoundError(id)
    return toUser(row)
  }

  /** The user, not deleted: a deleted one is a 409, an unknown one a 404. */
  async function existing (id: number): Promise<AdminUser> {
    const user = await find(id)
    if (user.status === 'deleted') throw new UserDeletedError()
    return user
  }

  function checkRoles (roles: string[]): void {
    const unknown = roles.filter((role) => !config.roles.has(role))
    if (unknown.length > 0) {
      const known = config.roles.size === 0 ? 'ROLES is empty' : `ROLES: ${[...config.roles].join(', ')}`
      throw new ValidationFailedError(unknown.map((role) => ({ field: 'roles', message: `${JSON.stringify(role)} is not one of the configured roles (${known})` })))
    }
  }

  return {
    async searchUsers (query: { q?: string, status?: UserStatus, cursor?: string, limit: number }, operator: Operator): Promise<Page<AdminUser>> {
      const after = idOfCursor(query.cursor)
      const text = query.q?.trim()
      // A prefix of the username or the address, case-insensitive; LIKE's own characters as themselves.
      const prefix = text === undefined || text === '' ? undefined : `${text.replace(/[\\%_]/g, '\\$&')}%`
      const rows = await searchForOperator(db, {
        after: after === undefined ? undefined : Number(after),
        prefix,
        id: prefix !== undefined && /^[0-9]{1,9}$/.test(text!) ? Number(text) : undefined,
        status: query.status,
        limit: query.limit + 1
      })
      record('admin_read', operator, null, { what: 'users', q: text ?? null, status: query.status ?? null })
      return page(rows.map(toUser), query.limit, (user) => user.id)
    },

    /** The user, when they last signed in, how many sessions they have open. */
    async user (id: number, operator: Operator): Promise<AdminUser & { active_sessions: number }> {
      const user = await find(id)
      const { n } = await db.selectFrom('sessions').select((eb) => eb.fn.countAll<string>().as('n'))
        .where('user_id', '=', id).where('revoked_at', 'is', null).where('expires_at', '>', clock.db())
        .executeTakeFirstOrThrow()
      record('admin_read', operator, id, { what: 'user' })
      return { ...user, active_sessions: Number(n) }
    },

    /**
     * Disables the account and ends every session (and so every refresh token) in one
     * transaction; with `until`, the next sign-in after it takes the account back.
     */
    async disable (id: number, change: { reason: string, until?: Date }, operator: Operator): Promise<AdminUser> {
      await existing(id)
      if (change.until !== undefined && change.until <= clock.now()) throw new ValidationFailedError([{ field: 'until', message: 'must be in the future' }])
      const ended = await sessions.changingUser(id, async (trx) => {
        await disable(trx, id, change.reason, change.until ?? null)
        return await sessions.endAll(id, trx)
      })
      record('user_disabled', operator, id, { reason: change.reason, until: change.until ?? null, sessions_ended: ended })
      return await find(id)
    },

    async enable (id: number, change: { reason: string }, operator: Operator): Promise<AdminUser> {
      await existing(id)
      await sessions.changingUser(id, (trx) => enable(trx, id))
      record('user_enabled', operator, id, { reason: change.reason })
      return await find(id)
    },

    /**
     * Soft: the account disabled for good, its name, address, password hash and roles removed,
     * its sessions (with their addresses and user agents), one-time codes, second factors and passkeys deleted; the row
     * stays, so the audit trail's references still name a user. Hard: the row and all that
     * hangs on it deleted; the audit trail keeps the id.
     */
    async remove (id: number, change: { mode: 'soft' | 'hard', reason: string }, operator: Operator): Promise<void> {
      await find(id)
      await sessions.changingUser(id, async (trx) => {
        if (change.mode === 'hard') {
          await deleteUser(trx, id)
          return
        }
        await sessions.removeAll(id, trx)
        await oneTimeCodes.removeAll(id, trx)
        await mfa.removeAll(id, trx)
        await deletePasskeysOf(trx, id)
        await scrub(trx, id, scrubbed(id), change.reason, clock.db())
      })
      record('user_deleted', operator, id, { mode: change.mode, reason: change.reason })
    },

    /** The user's linked identities of upstream providers. */
    async identitiesOf (id: number, operator: Operator) {
      await find(id)
      record('admin_read', operator, id, { what: 'identities' })
      return await identitiesOf(db, id)
    },

    /** The user's passkeys. */
    async passkeysOf (id: number, operator: Operator) {
      await find(id)
      record('admin_read', operator, id, { what: 'passkeys' })
      return await passkeys.list(id)
    },

    /** Removes a passkey of the user (a lost device); the user is mailed. NotFoundError when it is not one of theirs. */
    async removePasskey (id: number, change: { passkeyId: string, reason: string }, operator: Operator): Promise<void> {
      await existing(id)
      if (!await passkeys.removeByOperator(id, change.passkeyId)) throw new PasskeyNotFoundError(change.passkeyId)
      record('passkey_removed', operator, id, { reason: change.reason, passkey: change.passkeyId })
    },

    async sessionsOf (id: number, operator: Operator): Promise<SessionInfo[]> {
      await find(id)
      record('admin_read', operator, id, { what: 'sessions' })
      return await sessions.list(id)
    },

    /** Ends one session of the user (NotFoundError when it is not one of theirs, open), or all; how many ended. */
    async endSessions (id: number, change: { sessionId?: string, reason: string }, operator: Operator): Promise<number> {
      await find(id)
      const ended = await sessions.changingUser(id, (trx) => sessions.endAll(id, trx, change.sessionId))
      if (change.sessionId !== undefined && ended === 0) throw new NotFoundError()
      record('user_sessions_ended', operator, id, { reason: change.reason, session_id: change.sessionId ?? null, ended })
      return ended
    },

    /**
     * The user's roles, from the configured set: in their tokens from the next refresh, at
     * forward auth and introspection at once (the session caches forget the user).
     */
    async setRoles (id: number, change: { roles: string[], reason: string }, operator: Operator): Promise<AdminUser> {
      checkRoles(change.roles)
      const before = await existing(id)
      const roles = [...new Set(change.roles)].sort()
      await sessions.changingUser(id, (trx) => setRoles(trx, id, roles))
      record('user_roles_changed', operator, id, { reason: change.reason, before: before.roles, after: roles })
      return await find(id)
    },

    /**
     * Sends the user a password reset mail, the one `forgot` sends (APP_RESET_URL): the operator
     * starts the recovery and never sees its link or code. The per-account mail limit holds.
     */
    async sendPasswordReset (id: number, change: { reason: string }, operator: Operator): Promise<void> {
      const user = await existing(id)
      if (user.status === 'disabled') throw new UserDisabledError()
      if (!await passwordReset.mailTo(id)) throw new MailLimitReachedError()
      record('user_password_reset_mailed', operator, id, { reason: change.reason })
    },

    /**
     * Removes every second factor and recovery code of the user (a lost phone), the lock of the
     * second step lifted, and ends their sessions unless `keep_sessions` (whoever took the phone
     * may hold one); the user is mailed a notice. How many factors and sessions went.
     */
    async resetMfa (id: number, change: { reason: string, keep_sessions?: boolean }, operator: Operator): Promise<{ factors: number, sessions: number }> {
      await existing(id)
      const removed = await mfa.resetAll(id, { keepSessions: change.keep_sessions === true })
      record('user_mfa_reset', operator, id, { reason: change.reason, factors_removed: removed.factors, sessions_ended: removed.sessions })
      return removed
    },

    /** The audit trail, newest first, for one user or event if asked. */
    async auditTrail (query: { userId?: number, event?: string, cursor?: string, limit: number }, operator: Operator): Promise<Page<AuditRecord>> {
      const before = idOfCursor(query.cursor)
      const rows = await db.selectFrom('audit_events')
        .select(['id', 'at', 'event', 'outcome', 'user_id', 'session_id', 'identifier', 'ip', 'user_agent', 'detail'])
        .$if(before !== undefined, (q) => q.where('id', '<', before!))
        .$if(query.userId !== undefined, (q) => query.userId! > INT4_MAX ? q.where(sql<boolean>`false`) : q.where('user_id', '=', query.userId!))
        .$if(query.event !== undefined, (q) => q.where('event', '=', query.event!))
        .orderBy('id', 'desc')
        .limit(query.limit + 1)
        .execute()
      record('admin_read', operator, query.userId !== undefined && query.userId <= INT4_MAX ? query.userId : null, { what: 'audit', user_id: query.userId ?? null, event: query.event ?? null })
      return page(rows.map((row) => ({ ...row, id: String(row.id) })), query.limit, (row) => row.id)
    }
  }
}

export type Admin = ReturnType<typeof createAdmin>
