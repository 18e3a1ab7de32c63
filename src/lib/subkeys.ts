import { hkdfSync } from 'node:crypto'

/**
 * What SECRET_KEY keys, each use with a key of its own: the encrypted signing keys, the sealed
 * pair a refresh answers again within the grace, the HMAC of refresh tokens, the binding of the
 * refresh cookie to its host, the TOTP secrets, the HMAC of recovery codes. Named here once, so two places can never disagree on a name.
 */
export type Purpose = 'signing-keys' | 'refresh-successor' | 'refresh-tokens' | 'refresh-binding' | 'one-time-codes' | 'mail-outbox' | 'mfa-secrets' | 'recovery-codes'

/** The 256-bit key of `purpose`, derived from `secret` with HKDF-SHA256 (RFC 5869). */
export function subkey (secret: string, purpose: Purpose): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, 'authgate', purpose, 32))
}
