import { dictionary } from '@zxcvbn-ts/language-common'

// zxcvbn-ts's list of common passwords, lower-cased, offline (the list Django's
// CommonPasswordValidator is of the same kind).
const COMMON = new Set((dictionary['passwords-common'] as string[]).map((p) => p.toLowerCase()))

const MIN_LENGTH = 8
/** bcrypt reads at most 72 bytes: a longer password is refused, never silently truncated. */
export const MAX_PASSWORD_BYTES = 72

/** Why the password is refused, or an empty list. `username` and `email` are the account's. */
export function passwordProblems (password: string, account: { username?: string, email?: string }): string[] {
  const problems: string[] = []
  if ([...password].length < MIN_LENGTH) problems.push(`This password is too short. It must contain at least ${MIN_LENGTH} characters.`)
  if (Buffer.byteLength(password, 'utf8') > MAX_PASSWORD_BYTES) problems.push(`This password is too long. It must be at most ${MAX_PASSWORD_BYTES} bytes in UTF-8.`)
  const lower = password.toLowerCase()
  if (COMMON.has(lower)) problems.push('This password is too common.')
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
