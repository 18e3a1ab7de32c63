import bcrypt from 'bcrypt'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { EmailTakenError, InvalidCredentialsError, UsernameTakenError, ValidationFailedError } from '../errors.ts'
import type { Clock } from '../lib/clock.ts'
import { MAX_PASSWORD_BYTES, passwordProblems } from '../lib/password-policy.ts'
import { isUsername, normalizeUsername } from '../lib/usernames.ts'
import type { TokenPair, User } from '../schemas.ts'
import type { Client, Sessions } from './sessions.ts'

export interface Registration { username: string, email: string, password: string }

export interface AccountsDeps {
  db: Db
  sessions: Sessions
  clock: Clock
  config: Pick<Config, 'BCRYPT_COST'>
}

function isUniqueViolation (error: unknown): error is { code: string, constraint?: string } {
  return (error as { code?: unknown } | null)?.code === '23505'
}

/** Accounts: registration and sign-in. */
export async function createAccounts ({ db, sessions, clock, config }: AccountsDeps) {
  const cost = config.BCRYPT_COST
  // Compared against when the account does not exist, so that an unknown user costs one
  // comparison of the configured cost like a wrong password does. Made now, not on the first login.
  const dummyHash = await bcrypt.hash('authgate timing equaliser', cost)

  /**
   * The active user whose username (or, with an @, email) and password match, else
   * InvalidCredentialsError. Every failure costs at least one comparison at the configured
   * cost, whatever the cause, so the answer's timing tells nothing about the account.
   */
  async function authenticate (identifier: string, password: string): Promise<User> {
    const byEmail = identifier.includes('@')
    const row = await db.selectFrom('users')
      .select(['id', 'username', 'email', 'password_hash', 'is_active'])
      .where(byEmail ? 'email' : 'username', '=', byEmail ? identifier : normalizeUsername(identifier))
      .executeTakeFirst()

    // bcrypt reads 72 bytes: a longer password would match on its first 72. Refused, after the
    // same comparison as any other failure.
    const tooLong = Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES
    const hash = row === undefined || tooLong ? dummyHash : row.password_hash
    const matches = await bcrypt.compare(password, hash)
    const rounds = bcrypt.getRounds(hash)
    if (row === undefined || tooLong || !matches || !row.is_active) {
      // A hash made at a lower cost (before BCRYPT_COST was raised) fails faster: make up the difference.
      if (rounds < cost) await bcrypt.compare(password, dummyHash)
      throw new InvalidCredentialsError()
    }

    // Upgraded to the configured cost, only while the hash is still the one just verified:
    // a password change landing meanwhile is never overwritten with the old password.
    const rehash = rounds !== cost ? await bcrypt.hash(password, cost) : undefined
    await db.updateTable('users')
      .set({ last_login_at: clock.db(), ...(rehash === undefined ? {} : { password_hash: rehash }) })
      .where('id', '=', row.id)
      .$if(rehash !== undefined, (q) => q.where('password_hash', '=', row.password_hash))
      .execute()
    return { id: row.id, username: row.username, email: row.email }
  }

  return {
    /** Checks the policy, hashes, inserts; the database decides whether the name or email is taken. */
    async register (input: Registration): Promise<User> {
      const username = normalizeUsername(input.username)
      const problems = [
        ...(isUsername(username) ? [] : [{ field: 'username', message: 'Enter a valid username: letters, digits and . + - _ only.' }]),
        ...passwordProblems(input.password, { username, email: input.email }).map((message) => ({ field: 'password', message }))
      ]
      if (problems.length > 0) throw new ValidationFailedError(problems)

      const passwordHash = await bcrypt.hash(input.password, cost)
      try {
        return await db.insertInto('users')
          .values({ username, email: input.email, password_hash: passwordHash })
          .returning(['id', 'username', 'email'])
          .executeTakeFirstOrThrow()
      } catch (error) {
        if (isUniqueViolation(error)) throw error.constraint === 'users_email_key' ? new EmailTakenError() : new UsernameTakenError()
        throw error
      }
    },

    /** Signs a user in and opens a session: the user and the session's first pair. */
    async login (identifier: string, password: string, client: Client): Promise<{ user: User, pair: TokenPair }> {
      const user = await authenticate(identifier, password)
      return { user, pair: await sessions.start(user.id, client) }
    }
  }
}

export type Accounts = Awaited<ReturnType<typeof createAccounts>>
