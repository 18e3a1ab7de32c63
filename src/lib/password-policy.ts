import { readFileSync } from 'node:fs'
import { join } from 'node:path'

// zxcvbn-ts's list of common passwords (@zxcvbn-ts/language-common's 'passwords-common', the
// kind of list Django's CommonPasswordValidator holds), offline: lower-cased, sorted, one a
// line. Held as one string (388 KB) with where each line starts (197 KB), and looked up by binary
// search, about half a microsecond. Importing the package instead decompresses all its lists
// into arrays of strings at start: about 5 MB kept, and 20 MB of RSS in the garbage it leaves.
// test/password-policy.test.ts proves the file holds exactly the package's words; after an
// upgrade of the package, regenerate it:
//   node -e "import('@zxcvbn-ts/language-common').then(({ dictionary: d }) => process.stdout.write([...new Set(d['passwords-common'].map((p) => p.toLowerCase()))].sort().join('\n') + '\n'))" > src/lib/common-passwords.txt
const COMMON = readFileSync(join(import.meta.dirname, 'common-passwords.txt'), 'latin1')
// Line k runs from STARTS[k] to STARTS[k + 1] - 1 (its newline); the last entry is the text's end.
const STARTS = ((): Uint32Array => {
  const starts = [0]
  for (let at = COMMON.indexOf('\n'); at !== -1; at = COMMON.indexOf('\n', at + 1)) starts.push(at + 1)
  return Uint32Array.from(starts)
})()

/** Whether the lower-cased password is on the list: a binary search of its sorted lines. */
function isCommon (lower: string): boolean {
  let low = 0
  let high = STARTS.length - 2
  while (low <= high) {
    const middle = (low + high) >>> 1
    const word = COMMON.slice(STARTS[middle], STARTS[middle + 1]! - 1)
    if (word === lower) return true
    if (word < lower) low = middle + 1
    else high = middle - 1
  }
  return false
}

const MIN_LENGTH = 8
/** bcrypt reads at most 72 bytes: a longer password is refused, never silently truncated. */
export const MAX_PASSWORD_BYTES = 72

/** Why the password is refused, or an empty list. `username` and `email` are the account's. */
export function passwordProblems (password: string, account: { username?: string, email?: string }): string[] {
  const problems: string[] = []
  if ([...password].length < MIN_LENGTH) problems.push(`This password is too short. It must contain at least ${MIN_LENGTH} characters.`)
  if (Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES) problems.push(`This password is too long. It must be at most ${MAX_PASSWORD_BYTES} bytes in UTF-8.`)
  const lower = password.toLowerCase()
  if (isCommon(lower)) problems.push('This password is too common.')
  if ([account.username, account.email].some((value) => value !== undefined && lower === value.toLowerCase())) {
    problems.push('The password is too similar to the username or email.')
  }
  return problems
}

/**
 * The ajv keyword `x-password-policy` on a body object: `{ password, username?, email? }` name
 * its fields. The policy's findings join the schema's, so one answer lists every failing field.
 */
export const passwordPolicyKeyword = {
  keyword: 'x-password-policy',
  type: 'object',
  schemaType: 'object',
  errors: true,
  validate: function validate (fields: Record<string, string>, data: Record<string, unknown>, _parent?: unknown, context?: { instancePath: string }): boolean {
    const text = (name: string | undefined): string | undefined => typeof data[name ?? ''] === 'string' ? data[name!] as string : undefined
    const password = text(fields.password)
    if (password === undefined) return true
    const problems = passwordProblems(password, { username: text(fields.username), email: text(fields.email) })
    ;(validate as { errors?: unknown[] }).errors = problems.map((message) => ({
      keyword: 'x-password-policy',
      instancePath: `${context?.instancePath ?? ''}/${fields.password}`,
      params: {},
      message
    }))
    return problems.length === 0
  }
} as const
