import { createHash, timingSafeEqual } from 'node:crypto'

const digest = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest()

/**
 * Whether two secrets are equal, in time that tells nothing of either: their SHA-256 digests,
 * of one length whatever the texts', compared with timingSafeEqual.
 */
export function safeEqual (given: string, expected: string): boolean {
  return timingSafeEqual(digest(given), digest(expected))
}
