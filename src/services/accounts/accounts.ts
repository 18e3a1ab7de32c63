import bcrypt from 'bcrypt'
import type { Config } from '../../config.ts'
import type { Db } from '../../db/index.ts'
import { EmailTakenError, InvalidCredentialsError, UsernameTakenError, ValidationFailedError } from '../../errors.ts'
import type { Clock } from '../../lib/clock.ts'
import { isDjangoHash, verifyDjangoPassword } from '../../lib/django-hashers.ts'
import { withHashingSlot } from '../../lib/password-hashing.ts'
import { MAX_PASSWORD_BYTES, passwordProblems } from '../../lib/password-policy.ts'
import { normalizeUsername, usernameProblem } from '../../lib/usernames.ts'
import type { User } from '../../schemas.ts'
import type { AuditTrail, Caller } from '../audit.ts'
import type { SessionUser } from '../sessions/cache.ts'
import type { Credential, Sessions } from '../sessions/sessions.ts'
import { byIdentifier, insertUser, methodsOf, passwordHashOf, recordSignIn, setPasswordHash, signInMethods, type ActiveUser, type SignInMethods } from './users.ts'

export interface Registration { username: string, email: string, password: string }

export interface AccountsDeps {
  db: Db
  sessions: Sessions
  clock: Clock
  config: Pick<Config, 'BCRYPT_COST'>
  audit: AuditTrail
}

/** A first factor passed: the user, the credential a session starts from, whether their address is verified, what they can sign in with (whether a second step must follow). */
export interface PasswordProof { user: User, credential: Credential, emailVerified: boolean, methods: SignInMethods }

/**
 * The proof of a sign-in that took no password (a mailed code, a provider, a passkey), for the
 * user activeWithMethods read: no password hash in the credential to hold the session to.
 */
export const proofOf = (user: ActiveUser): PasswordProof => ({
  user: { id: user.id, username: user.username, email: user.email },
  credential: { userId: user.id, roles: user.roles },
  emailVerified: user.email_verified_at !== null,
  methods: user.methods
})

function isUniqueViolation (error: unknown): error is { code: string, constraint?: string } {
  return (error as { code?: unknown } | null)?.code === '23505'
}

/** Accounts: registration, the password check of a sign-in, the password change. */
export async function createAccounts ({ db, sessions, clock, config, audit }: AccountsDeps) {
  const cost = config.BCRYPT_COST
  /** A password's hash at the configured cost, in a slot of the pool. */
  const hashPassword = (password: string): Promise<string> => withHashingSlot(() => bcrypt.hash(password, cost))
  // Compared against when the account does not exist, so that an unknown user costs one
  // comparison of the configured cost like a wrong password does. Started now, not on the first
  // login, but not awaited: at cost 12 it is a quarter of a second of the thread pool's CPU that
  // the start no longer waits for. Every password check awaits it first (see passwordMatches).
  // In a slot of the pool, as every hashing.
  const dummy = hashPassword('authgate timing equaliser')
  // Awaited by each check, which then fails with its error; never an unhandled rejection.
  dummy.catch(() => {})

  /**
   * Whether the password matches the stored hash (none: an unknown account): bcrypt, or a hash
   * imported from Django. A failure costs at least one bcrypt comparison at the configured
   * cost, whatever its cause: an unknown account, a hash made at a lower cost before
   * BCRYPT_COST was raised, a Django hash, a password over bcrypt's 72 bytes (refused, as it
   * would match on its first 72).
   */
  async function passwordMatches (password: string, hash: string | undefined): Promise<boolean> {
    // Every check, whatever the account, waits for the equaliser: a login in the first moments
    // after the start waits the same for a known account as for an unknown one. Waited for
    // before the slot, which the equaliser may still be waiting for itself.
    const dummyHash = await dummy
    // One slot of the pool for the whole check: its comparisons run one after the other.
    return await withHashingSlot(() => check(password, hash, dummyHash))
  }

  async function check (password: string, hash: string | undefined, dummyHash: string): Promise<boolean> {
    const tooLong = Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES
    // Django's hashers read the whole password, however long: such a hash is checked as it is.
    if (hash !== undefined && isDjangoHash(hash)) {
      if (await verifyDjangoPassword(password, hash)) return true
    } else {
      const compared = hash === undefined || tooLong ? dummyHash : hash
      if (await bcrypt.compare(password, compared) && compared !== dummyHash) return true
      if (bcrypt.getRounds(compared) >= cost) return false
    }
    await bcrypt.compare(password, dummyHash)
    return false
  }

  // A hash of another cost, or one imported from Django, becomes bcrypt at the configured cost;
  // but not a Django hash of a password longer than bcrypt reads, which it would cut.
  const needsRehash = (hash: string, password: string): boolean => isDjangoHash(hash)
    ? Buffer.byteLength(password, 'utf8') <= MAX_PASSWORD_BYTES
    : bcrypt.getRounds(hash) !== cost

  /** Throws ValidationFailedError of `new_password` unless the password passes the policy for the user. */
  function checkNewPassword (password: string, user: { username?: string, email?: string }): void {
    const problems = passwordProblems(password, user)
    if (problems.length > 0) throw new ValidationFailedError(problems.map((message) => ({ field: 'new_password', message })))
  }

  /**
   * The active user whose username (or, with an @, email) and password match, else
   * InvalidCredentialsError. Every failure costs at least one comparison at the configured
   * cost, whatever the cause, so the answer's timing tells nothing about the account.
   */
  async function authenticate (identifier: string, password: string): Promise<PasswordProof> {
    const row = await byIdentifier(db, identifier).select(['id', 'username', 'email', 'password_hash', 'is_active', 'disabled_until', 'roles', 'email_verified_at'])
      .select(signInMethods).executeTakeFirst()

    const hash = row?.password_hash ?? undefined
    const matches = await passwordMatches(password, hash)
    // An operator's disable with an end is over once the end has passed: this sign-in takes the
    // account back (only while that end is still the one read: a new disable meanwhile stands).
    const resumes = row !== undefined && !row.is_active && row.disabled_until !== null && row.disabled_until <= clock.now()
    if (row === undefined || hash === undefined || !matches || !(row.is_active || resumes)) throw new InvalidCredentialsError()

    // Upgraded to the configured cost, only while the hash is still the one just verified:
    // a password change landing meanwhile is never overwritten with the old password.
    const rehash = needsRehash(hash, password) ? await hashPassword(password) : undefined
    const updated = await recordSignIn(db, row.id, clock.db(), { rehash, hash, ...(resumes ? { resumeFrom: row.disabled_until! } : {}) })
    const passwordHash = rehash !== undefined && updated ? rehash : hash
    return { user: { id: row.id, username: row.username, email: row.email }, credential: { userId: row.id, passwordHash, roles: row.roles }, emailVerified: row.email_verified_at !== null, methods: methodsOf(row) }
  }

  return {
    /**
     * What the sign-ins of an identifier are counted by (the per-account rate limit): its
     * account's id, whichever of its names was given and however its case is written; for no
     * account, the identifier itself, case-folded.
     */
    async limitKey (identifier: string): Promise<string> {
      const row = await byIdentifier(db, identifier).select('id').executeTakeFirst()
      return row === undefined ? `name:${normalizeUsername(identifier).toLowerCase()}` : `user:${row.id}`
    },

    authenticate,
    checkNewPassword,

    /** Whether `password` is the user's: a comparison at the configured cost either way, as every password check. */
    async passwordIs (userId: number, password: string): Promise<boolean> {
      const row = await passwordHashOf(db, userId).executeTakeFirst()
      return await passwordMatches(password, row?.password_hash ?? undefined)
    },

    hashPassword,

    /** Checks the policy, hashes, inserts; the database decides whether the name or email is taken. */
    async register (input: Registration, caller: Caller): Promise<User> {
      const username = normalizeUsername(input.username)
      const invalid = usernameProblem(username)
      const problems = [
        ...(invalid === undefined ? [] : [{ field: 'username', message: invalid }]),
        ...passwordProblems(input.password, { username, email: input.email }).map((message) => ({ field: 'password', message }))
      ]
      if (problems.length > 0) throw new ValidationFailedError(problems)

      const passwordHash = await hashPassword(input.password)
      let user: User
      try {
        user = await insertUser(db, { username, email: input.email, password_hash: passwordHash })
      } catch (error) {
        if (isUniqueViolation(error)) throw error.constraint === 'users_email_key' ? new EmailTakenError() : new UsernameTakenError()
        throw error
      }
      audit.record({ event: 'register', userId: user.id }, caller)
      return user
    },

    /**
     * Changes the password of a signed-in user who proves the current one, and ends every other
     * session of the user in the same transaction; the current one stays.
     */
    async changePassword (user: SessionUser, currentPassword: string, newPassword: string, caller: Caller): Promise<void> {
      const who = { event: 'password_changed', userId: user.id, sessionId: user.sessionId } as const
      // A user whose row went away since the session was checked (deleted by hand) has no password to change.
      const hash = (await passwordHashOf(db, user.id).executeTakeFirst())?.password_hash ?? null
      if (hash === null || !await passwordMatches(currentPassword, hash)) {
        audit.record({ ...who, outcome: 'failure' }, caller)
        throw new InvalidCredentialsError()
      }
      checkNewPassword(newPassword, user)
      const newHash = await hashPassword(newPassword)
      await sessions.changingUser(user.id, async (trx) => {
        // Keyed by the hash just verified: of two changes at once, the second finds it gone.
        if (!await setPasswordHash(trx, user.id, newHash, { was: hash })) throw new InvalidCredentialsError()
        await sessions.revoke(user.id, user.sessionId, 'others', trx)
      })
      audit.record(who, caller)
    }
  }
}

export type Accounts = Awaited<ReturnType<typeof createAccounts>>
