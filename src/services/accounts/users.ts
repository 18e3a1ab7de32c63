import { expressionBuilder, sql, type ExpressionBuilder, type QueryCreator, type RawBuilder } from 'kysely'
import type { Executor } from '../../db/index.ts'
import type { Database } from '../../db/types.ts'
import { normalizeUsername } from '../../lib/usernames.ts'
import type { User } from '../../schemas.ts'

// The one owner of `users` (atproto's pds account-manager helpers, kysely's example repository):
// every statement on the table starts here, each helper taking the executor (the database or a
// transaction) so that one transaction can span several, whichever service runs them.

/**
 * The columns of `users` a session's user is read with, and cached with on each replica: the
 * trigger users_notify (migration 0004) fires on a change of exactly these and is_active, and
 * test/session-cache.test.ts holds the two lists equal.
 */
export const SESSION_USER_COLUMNS = ['id', 'username', 'email', 'roles', 'email_verified_at'] as const

/** A user as the session routes, forward auth and introspection know them: with their roles, and when their address was verified. */
export interface UserWithRoles extends User { roles: string[], email_verified_at: Date | null }

/** How a second step is proven with a code (POST /api/auth/mfa/verify): of the authenticator app, or one of the recovery codes. */
export type MfaMethod = 'totp' | 'recovery_code'

/** How a second step may be proven: a code, or a passkey (POST /api/auth/passkeys/authentication/verify with the mfa_token). */
export type SecondStepMethod = MfaMethod | 'passkey'

/**
 * What a user can sign in with, read with the user: a password set, a verified TOTP factor,
 * recovery codes left, identities of upstream providers linked, passkeys. The questions below
 * take them into account in this one place.
 */
export interface SignInMethods { password: boolean, totp: boolean, recoveryCodes: boolean, identities: number, passkeys: number }

const countOf = (eb: ExpressionBuilder<Database, 'users'>, table: 'user_identities' | 'passkeys') =>
  eb.selectFrom(table).select((e) => e.cast<number>(e.fn.countAll(), 'integer').as('n'))
    .whereRef(`${table}.user_id`, '=', 'users.id').$asScalar().$castTo<number>()

/** A selection of `users`: its sign-in methods (read with the user, no round trip of their own). */
export const signInMethods = (eb: ExpressionBuilder<Database, 'users'>) => [
  eb('users.password_hash', 'is not', null).$castTo<boolean>().as('method_password'),
  eb.exists(eb.selectFrom('mfa_factors').select('mfa_factors.id')
    .whereRef('mfa_factors.user_id', '=', 'users.id').where('mfa_factors.verified_at', 'is not', null)).$castTo<boolean>().as('method_totp'),
  eb.exists(eb.selectFrom('recovery_codes').select('recovery_codes.id')
    .whereRef('recovery_codes.user_id', '=', 'users.id').where('recovery_codes.used_at', 'is', null)).$castTo<boolean>().as('method_recovery_code'),
  countOf(eb, 'user_identities').as('method_identities'),
  countOf(eb, 'passkeys').as('method_passkeys')
]

/** The methods of a row read with signInMethods. */
export const methodsOf = (row: { method_password: boolean, method_totp: boolean, method_recovery_code: boolean, method_identities: number, method_passkeys: number }): SignInMethods =>
  ({ password: row.method_password, totp: row.method_totp, recoveryCodes: row.method_recovery_code, identities: row.method_identities, passkeys: row.method_passkeys })

/**
 * Whether a sign-in of a user with these methods takes a second step (an mfa_token) after its
 * first factor: when they turned on a second factor (TOTP). A passkey is a way in of its own,
 * aal2 by itself; it does not make a password sign-in take a second step (docs/passkeys.md).
 */
export const needsSecondStep = (methods: SignInMethods): boolean => methods.totp

/** How that second step may be proven: a TOTP code, a passkey, and a recovery code while some are left. */
export const secondStepMethods = (methods: SignInMethods): SecondStepMethod[] =>
  ['totp', ...(methods.passkeys > 0 ? ['passkey' as const] : []), ...(methods.recoveryCodes ? ['recovery_code' as const] : [])]

/**
 * Whether the user can sign in at aal2 (a second factor, or a passkey): adding another such way
 * then takes an aal2 session, so that a thief of a password session cannot add their own.
 */
export const hasAal2Way = (methods: SignInMethods): boolean => methods.totp || methods.passkeys > 0

/**
 * Whether a user with these methods can still get in on their own: a password, a linked
 * identity, a passkey, or their address, where the service mails a sign-in code or a reset link to it.
 */
export const hasWayIn = (methods: SignInMethods, features: { emailSignIn: boolean, passwordReset: boolean }): boolean =>
  methods.password || methods.identities > 0 || methods.passkeys > 0 || features.emailSignIn || features.passwordReset

/** The user's sign-in methods (none of an unknown user); with `lock`, the user's row locked until the transaction ends (two removals of a way in at once: one waits, then sees the other's). */
export async function methodsOfUser (executor: Executor, userId: number, { lock = false } = {}): Promise<SignInMethods> {
  const row = await executor.selectFrom('users').select(signInMethods).where('id', '=', userId).$if(lock, (q) => q.forUpdate()).executeTakeFirst()
  return row === undefined ? { password: false, totp: false, recoveryCodes: false, identities: 0, passkeys: 0 } : methodsOf(row)
}

// An active, not deleted user: written here once. A deleted user is never active (a soft
// delete disables the account for good), so `deleted_at` guards against a row changed by hand.
const isActive = (eb: ExpressionBuilder<Database, 'users'>) => eb.and([eb('users.is_active', '=', true), eb('users.deleted_at', 'is', null)])

// A subquery is built apart from any executor, as an expression builder's is: the statement it
// goes in runs it, once, through that statement's executor and plugins.
const subquery = expressionBuilder<Database, never>()

/** The active, not deleted users, to select from: within `executor`, or, without one, as a subquery of another statement. */
export const activeUsers = (executor?: Executor) => (executor === undefined ? subquery.selectFrom('users') : executor.selectFrom('users')).where(isActive)

/** The users of sessions (SESSION_USER_COLUMNS), active: a subquery to join a session to. */
export const sessionUsers = () => activeUsers().select(SESSION_USER_COLUMNS)

/** The active user of an id or an address, if any; with `unverified`, only while their address is not verified yet. */
export async function findActive (executor: Executor, who: { userId: number } | { email: string }, { unverified = false } = {}): Promise<User | undefined> {
  return await activeUsers(executor).select(['id', 'username', 'email'])
    .where((eb) => 'userId' in who ? eb('id', '=', who.userId) : eb('email', '=', who.email))
    .$if(unverified, (q) => q.where('email_verified_at', 'is', null))
    .executeTakeFirst()
}

/** The active user of an id with their sign-in methods and whether their address was ever proven. */
export async function activeWithMethods (executor: Executor, userId: number) {
  const row = await activeUsers(executor).select(['id', 'username', 'email', 'roles', 'email_verified_at']).select(signInMethods)
    .where('id', '=', userId).executeTakeFirst()
  return row === undefined ? undefined : { ...row, methods: methodsOf(row) }
}

/** An active user with their sign-in methods, as activeWithMethods and recordLoginOfSigner read them. */
export type ActiveUser = NonNullable<Awaited<ReturnType<typeof activeWithMethods>>>

/** Whom a notice about the account goes to (its name and address), while it is not deleted. */
export async function recipientOf (executor: Executor, userId: number): Promise<{ username: string, email: string } | undefined> {
  return await executor.selectFrom('users').select(['username', 'email']).where('id', '=', userId).where('deleted_at', 'is', null).executeTakeFirst()
}

/** The id of the account of an address, active or not. */
export async function idOfEmail (executor: Executor, email: string): Promise<number | undefined> {
  return (await executor.selectFrom('users').select('id').where('email', '=', email).executeTakeFirst())?.id
}

/** The address of the user: a subquery, for a statement that compares with it. */
export const emailOfUser = (userId: number) => subquery.selectFrom('users').select('email').where('id', '=', userId)

/**
 * The user a sign-in names: by email when it holds an @, else by username (NFKC). citext
 * compares as the unique constraints do, without regard to case.
 */
export const byIdentifier = (executor: Executor, identifier: string) => identifier.includes('@')
  ? executor.selectFrom('users').where('email', '=', identifier)
  : executor.selectFrom('users').where('username', '=', normalizeUsername(identifier))

/** The user's password hash (null: none set; undefined: no such user). */
export const passwordHashOf = (executor: Executor, userId: number) => executor.selectFrom('users').select('password_hash').where('id', '=', userId)

/** A new user; the database decides whether the name or address is taken (23505). */
export async function insertUser (executor: Executor, values: { username: string, email: string, password_hash: string }): Promise<User> {
  return await executor.insertInto('users').values(values).returning(['id', 'username', 'email']).executeTakeFirstOrThrow()
}

/**
 * A new user of an upstream sign-in: no password, the address verified at `verifiedAt` when the
 * provider proved it. Undefined when the name or the address is taken (any unique constraint:
 * the caller tells which).
 */
export async function insertUpstreamUser (executor: Executor, values: { username: string, email: string, verifiedAt: RawBuilder<Date> | null }): Promise<User | undefined> {
  return await executor.insertInto('users')
    .values({ username: values.username, email: values.email, password_hash: null, email_verified_at: values.verifiedAt })
    .onConflict((oc) => oc.doNothing())
    .returning(['id', 'username', 'email'])
    .executeTakeFirst()
}

/**
 * The user handle of the user's passkeys: made at the first call (32 random bytes, base64url,
 * never the id or the address) and the same from then on, whatever runs at once; undefined for
 * a user who is not active.
 */
export async function userHandleOf (executor: Executor, userId: number, made: string): Promise<string | undefined> {
  const row = await executor.updateTable('users')
    .set((eb) => ({ webauthn_user_handle: eb.fn.coalesce('webauthn_user_handle', eb.val(made)) }))
    .where('id', '=', userId).where(isActive)
    .returning('webauthn_user_handle')
    .executeTakeFirst()
  return row?.webauthn_user_handle ?? undefined
}

/** A sign-in that proved no password (an upstream provider's): when. */
export async function recordLastLogin (executor: Executor, userId: number, at: RawBuilder<Date>): Promise<void> {
  await executor.updateTable('users').set({ last_login_at: at }).where('id', '=', userId).execute()
}

/**
 * The sign-in of the active user whom the WITH `signer` of `q` names (its user_id), recorded as
 * recordLastLogin does, in that one statement: the user with their sign-in methods, as
 * activeWithMethods reads them; undefined when `signer` names no one, or no active user.
 */
export async function recordLoginOfSigner (q: QueryCreator<Database & { signer: { user_id: number } }>, at: RawBuilder<Date>): Promise<ActiveUser | undefined> {
  const row = await q.updateTable('users').from('signer')
    .set({ last_login_at: at })
    .whereRef('users.id', '=', 'signer.user_id').where(isActive)
    .returning(['users.id', 'users.username', 'users.email', 'users.roles', 'users.email_verified_at']).returning(signInMethods)
    .executeTakeFirst()
  return row === undefined ? undefined : { ...row, methods: methodsOf(row) }
}

/**
 * A sign-in recorded: when, the hash upgraded (only while the stored one is still `hash`, the one
 * verified), the account taken back from a disable that ended (only while its end is still
 * `disabledUntil`). Whether the row was updated.
 */
export async function recordSignIn (executor: Executor, userId: number, at: RawBuilder<Date>, { rehash, hash, resumeFrom }: { rehash?: string, hash: string, resumeFrom?: Date }): Promise<boolean> {
  const updated = await executor.updateTable('users')
    .set({
      last_login_at: at,
      ...(rehash === undefined ? {} : { password_hash: rehash }),
      ...(resumeFrom === undefined ? {} : { is_active: true, disabled_reason: null, disabled_until: null })
    })
    .where('id', '=', userId)
    .$if(rehash !== undefined, (q) => q.where('password_hash', '=', hash))
    .$if(resumeFrom !== undefined, (q) => q.where('disabled_until', '=', resumeFrom!))
    .executeTakeFirst()
  return updated.numUpdatedRows === 1n
}

/**
 * Sets the password hash, only while the guard holds: the stored hash is still `was` (a change
 * that proved the current password), or the user is active (a reset). Whether it was set.
 */
export async function setPasswordHash (executor: Executor, userId: number, hash: string, guard: { was: string } | 'active'): Promise<boolean> {
  const changed = await executor.updateTable('users')
    .set({ password_hash: hash })
    .where('id', '=', userId)
    .where((eb) => guard === 'active' ? isActive(eb) : eb('password_hash', '=', guard.was))
    .executeTakeFirst()
  return changed.numUpdatedRows === 1n
}

/**
 * The row of a proof of `email` for the user, locked until the transaction ends (two proofs at
 * once: the second waits, then finds it proven), while it is still their address and the
 * account is not deleted.
 */
export async function lockForProof (executor: Executor, userId: number, email: string) {
  return await executor.selectFrom('users').select(['email_verified_at', 'password_hash'])
    .where('id', '=', userId).where('email', '=', email).where('deleted_at', 'is', null)
    .forUpdate()
    .executeTakeFirst()
}

/** Marks the user's address verified at `at`; with `dropPassword`, their password stops working. */
export async function markVerified (executor: Executor, userId: number, at: RawBuilder<Date>, { dropPassword }: { dropPassword: boolean }): Promise<void> {
  await executor.updateTable('users').set({ email_verified_at: at, ...(dropPassword ? { password_hash: null } : {}) }).where('id', '=', userId).execute()
}

/**
 * Counts a second step of the user before its code is judged, in one guarded statement: none
 * while the second step is locked (undefined); the try that makes `lockAfter` in a row locks it
 * until `lockedUntil`. A lock that has run out starts the count again.
 */
export async function countSecondStep (executor: Executor, userId: number, now: RawBuilder<Date>, lockAfter: number, lockedUntil: RawBuilder<Date>): Promise<number | undefined> {
  const counted = await executor.updateTable('users')
    .set((eb) => {
      const tries = sql<number>`(case when ${eb.ref('mfa_locked_until')} is null then ${eb.ref('mfa_failures')} + 1 else 1 end)`
      return { mfa_failures: tries, mfa_locked_until: sql<Date | null>`case when ${tries} >= cast(${lockAfter} as integer) then ${lockedUntil} end` }
    })
    .where('id', '=', userId)
    .where((eb) => eb.or([eb('mfa_locked_until', 'is', null), eb('mfa_locked_until', '<=', now)]))
    .returning('mfa_failures')
    .executeTakeFirst()
  return counted?.mfa_failures
}

/**
 * Takes back a counted second step that was not a guess: with the lock it set, if it was the one
 * that set it (`tries` reached `lockAfter`); never a lock another try set.
 */
export async function uncountSecondStep (executor: Executor, userId: number, tries: number, lockAfter: number): Promise<void> {
  await executor.updateTable('users').set({ mfa_failures: sql<number>`mfa_failures - 1`, mfa_locked_until: null })
    .where('id', '=', userId).where('mfa_failures', '>', 0)
    .where((eb) => tries >= lockAfter
      ? eb.and([eb('mfa_failures', '=', tries), eb('mfa_locked_until', 'is not', null)])
      : eb('mfa_locked_until', 'is', null))
    .execute()
}

/** The second steps' count cleared and their lock lifted. */
export async function clearSecondSteps (executor: Executor, userId: number): Promise<void> {
  await executor.updateTable('users').set({ mfa_failures: 0, mfa_locked_until: null }).where('id', '=', userId).execute()
}

/** The columns of a user as operators see them (the admin API). */
export const OPERATOR_COLUMNS = ['id', 'username', 'email', 'is_active', 'roles', 'created_at', 'last_login_at', 'disabled_reason', 'disabled_until', 'deleted_at'] as const

/** A user as operators read them, whatever their state. */
export const operatorViewOf = (executor: Executor, userId: number) => executor.selectFrom('users').select(OPERATOR_COLUMNS).where('id', '=', userId).executeTakeFirst()

/**
 * A page of users for operators, by id: after the id `after`; whose username or address starts
 * with `prefix` (a LIKE pattern, case-insensitive) or whose id is `id`; of a state.
 */
export async function searchForOperator (executor: Executor, query: { after?: number, prefix?: string, id?: number, status?: 'active' | 'disabled' | 'deleted', limit: number }) {
  const { after, prefix, id, status } = query
  return await executor.selectFrom('users').select(OPERATOR_COLUMNS)
    .$if(after !== undefined, (q) => q.where('id', '>', after!))
    .$if(prefix !== undefined, (q) => q.where((eb) => eb.or([
      eb(sql`cast(username as text)`, 'ilike', sql`cast(${prefix} as text)`),
      eb(sql`cast(email as text)`, 'ilike', sql`cast(${prefix} as text)`),
      ...(id === undefined ? [] : [eb('id', '=', id)])
    ])))
    .$if(status === 'active', (q) => q.where(isActive))
    .$if(status === 'disabled', (q) => q.where('is_active', '=', false).where('deleted_at', 'is', null))
    .$if(status === 'deleted', (q) => q.where('deleted_at', 'is not', null))
    .orderBy('id')
    .limit(query.limit)
    .execute()
}

/** Disables the account, not deleted, with the reason; with `until`, the next sign-in after it takes the account back. */
export async function disable (executor: Executor, userId: number, reason: string, until: Date | null): Promise<void> {
  await executor.updateTable('users')
    .set({ is_active: false, disabled_reason: reason, disabled_until: until })
    .where('id', '=', userId).where('deleted_at', 'is', null)
    .execute()
}

/** Enables the account, not deleted. */
export async function enable (executor: Executor, userId: number): Promise<void> {
  await executor.updateTable('users')
    .set({ is_active: true, disabled_reason: null, disabled_until: null })
    .where('id', '=', userId).where('deleted_at', 'is', null)
    .execute()
}

/** The user's roles, while not deleted. */
export async function setRoles (executor: Executor, userId: number, roles: string[]): Promise<void> {
  await executor.updateTable('users').set({ roles }).where('id', '=', userId).where('deleted_at', 'is', null).execute()
}

/** The row deleted, and all that hangs on it (the foreign keys cascade). */
export async function deleteUser (executor: Executor, userId: number): Promise<void> {
  await executor.deleteFrom('users').where('id', '=', userId).execute()
}

/**
 * A soft delete: the account disabled for good, with the reason, its name and address
 * `scrubbed`, its password and roles gone; deleted at `at`, or when it was first deleted.
 */
export async function scrub (executor: Executor, userId: number, scrubbed: { username: string, email: string }, reason: string, at: RawBuilder<Date>): Promise<void> {
  await executor.updateTable('users').set({
    ...scrubbed,
    password_hash: null,
    roles: [],
    webauthn_user_handle: null,
    is_active: false,
    disabled_reason: reason,
    disabled_until: null,
    deleted_at: sql<Date>`coalesce(deleted_at, ${at})`
  }).where('id', '=', userId).execute()
}

/**
 * A user imported with their own id; undefined when a unique constraint (id, username, email)
 * holds it back. Kysely's builder cannot say `overriding system value`, which explicit ids of an
 * identity column need. Without a conflict target, every unique constraint makes the row a no-op
 * instead of an error: the database decides.
 */
export async function importUser (executor: Executor, user: { id: number, username: string, email: string, passwordHash: string, isActive: boolean }): Promise<number | undefined> {
  const { rows } = await sql<{ id: number }>`
    insert into users (id, username, email, password_hash, is_active) overriding system value
    values (${user.id}, ${user.username}, ${user.email}, ${user.passwordHash}, ${user.isActive})
    on conflict do nothing
    returning id`.execute(executor)
  return rows[0]?.id
}

/**
 * The users holding the id, the username or the address of a user to import, and which of the
 * two they hold. citext compares as the unique constraints do, without regard to case.
 */
export async function holdersOf (executor: Executor, user: { id: number, username: string, email: string }) {
  return await executor.selectFrom('users')
    .select(['id', 'username', 'email', sql<boolean>`username = ${user.username}`.as('same_username'), sql<boolean>`email = ${user.email}`.as('same_email')])
    .where((eb) => eb.or([eb('id', '=', user.id), eb('username', '=', user.username), eb('email', '=', user.email)]))
    .orderBy('id')
    .execute()
}

/** The sequence of users.id past the highest id, and never back: ids of deleted users are not handed out again. */
export async function advanceIdSequence (executor: Executor): Promise<void> {
  await sql`
    select setval(seq, greatest(max_id, coalesce(pg_sequence_last_value(seq), 0)))
    from (select pg_get_serial_sequence('users', 'id')::regclass as seq, max(id) as max_id from users) as users
    where max_id is not null`.execute(executor)
}
