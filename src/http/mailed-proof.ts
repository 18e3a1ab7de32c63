import { ValidationFailedError } from '../errors.ts'
import type { MailedProof } from '../schemas.ts'

/**
 * The mailed proof a body's MailedProofFieldsSchema fields give: the link's token alone, or the
 * address and the code together; anything else is a 400 naming the rule.
 */
export function mailedProofOf ({ token, email, code }: { token?: string, email?: string, code?: string }): MailedProof {
  if (token !== undefined && email === undefined && code === undefined) return { token }
  if (token === undefined && email !== undefined && code !== undefined) return { email, code }
  throw new ValidationFailedError([{ field: 'token', message: 'Give the token of the link, or the email and the code, not both.' }])
}
