import bcrypt from 'bcrypt'
import type { Db } from '../db/index.ts'
import { EmailTakenError, InvalidCredentialsError, UsernameTakenError, ValidationFailedError, type FieldError } from '../errors.ts'
import { MAX_PASSWORD_BYTES, passwordProblems } from '../lib/password-policy.ts'
import type { User } from '../schemas.ts'

const USERNAME_PATTERN = /^[\p{L}\p{N}.+_-]{1,150}$/u

/** NFKC, as Django's AbstractBaseUser.normalize_username does. */
export function normalizeUsername (username: string): string {
  return username.normalize('NFKC')
}

export interface Registration { username: string, email: string, password: string }

function isUniqueViolation (error: unknown): error is { code: string, constraint?: string } {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === '23505'
}

/** Checks the policy, hashes, inserts; the database decides whether the name or email is taken. */
export async function registerUser (db: Db, input: Registration, bcryptCost: number): Promise<User> {
  const username = normalizeUsername(input.username)
  const email = input.email
  const problems: FieldError[] = []
  // NFKC can turn an allowed character into a refused one ("½" into "1⁄2").
  if (!USERNAME_PATTERN.test(username)) {
    problems.push({ field: 'username', message: 'Enter a valid username: letters, digits and . + - _ only.' })
  }
  for (const message of passwordProblems(input.password, { username, email })) {
    problems.push({ field: 'password', message })
  }
  if (problems.length > 0) throw new ValidationFailedError(problems)

  const passwordHash = await bcrypt.hash(input.password, bcryptCost)
  try {
    return await db.insertInto('users')
      .values({ username, email, password_hash: passwordHash })
      .returning(['id', 'username', 'email'])
      .executeTakeFirstOrThrow()
  } catch (error) {
    if (isUniqueViolation(error)) {
      throw error.constraint === 'users_email_key' ? new EmailTakenError() : new UsernameTakenError()
    }
    throw error
  }
}

// Compared against when the account does not exist, so that an unknown user costs one bcrypt
// comparison like a wrong password does: the answer's timing tells nothing.
const dummyHashes = new Map<number, Promise<string>>()
/** The hash an unknown user's password is compared with; made at start, not on the first login. */
export function dummyHash (cost: number): Promise<string> {
  let hash = dummyHashes.get(cost)
  if (hash === undefined) {
    hash = bcrypt.hash('authgate timing equaliser', cost)
    dummyHashes.set(cost, hash)
  }
  return hash
}

/**
 * The active user whose username (or, with an @, email) and password match, else
 * InvalidCredentialsError. A hash of another cost is upgraded to the configured one.
 */
export async function authenticateUser (db: Db, identifier: string, password: string, bcryptCost: number, now: Date): Promise<User> {
  const byEmail = identifier.includes('@')
  const row = await db.selectFrom('users')
    .select(['id', 'username', 'email', 'password_hash', 'is_active'])
    .where(byEmail ? 'email' : 'username', '=', byEmail ? identifier : normalizeUsername(identifier))
    .executeTakeFirst()

  // bcrypt reads 72 bytes: a longer password would match on its first 72. Refused, after the
  // same comparison as any other failure.
  const tooLong = Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES
  const matches = await bcrypt.compare(password, row === undefined || tooLong ? await dummyHash(bcryptCost) : row.password_hash)
  if (row === undefined || tooLong || !matches || !row.is_active) throw new InvalidCredentialsError()

  const rehash = bcrypt.getRounds(row.password_hash) !== bcryptCost ? await bcrypt.hash(password, bcryptCost) : undefined
  await db.updateTable('users')
    .set({ last_login_at: now, ...(rehash === undefined ? {} : { password_hash: rehash }) })
    .where('id', '=', row.id)
    .execute()
  return { id: row.id, username: row.username, email: row.email }
}
