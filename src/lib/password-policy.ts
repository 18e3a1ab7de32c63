import { dictionary } from '@zxcvbn-ts/language-common'

// zxcvbn-ts's list of common passwords, lower-cased, offline (the list Django's
// CommonPasswordValidator is of the same kind).
const COMMON = new Set((dictionary['passwords-common'] as string[]).map((p) => p.toLowerCase()))

const MIN_LENGTH = 8
/** bcrypt reads at most 72 bytes: a longer password is refused, never silently truncated. */
export const MAX_PASSWORD_BYTES = 72

/** Why the password is refused, or an empty list. `username` and `email` are the account's. */
export function passwordProblems (password: string, account: { username: string, email: string }): string[] {
  const problems: string[] = []
  if ([...password].length < MIN_LENGTH) problems.push(`This password is too short. It must contain at least ${MIN_LENGTH} characters.`)
  if (Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES) problems.push(`This password is too long. It must be at most ${MAX_PASSWORD_BYTES} bytes in UTF-8.`)
  const lower = password.toLowerCase()
  if (COMMON.has(lower)) problems.push('This password is too common.')
  if (lower === account.username.toLowerCase() || lower === account.email.toLowerCase()) {
    problems.push('The password is too similar to the username or email.')
  }
  return problems
}
