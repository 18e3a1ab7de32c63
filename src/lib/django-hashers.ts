import bcrypt from 'bcrypt'
import { createHash, pbkdf2 } from 'node:crypto'
import { promisify } from 'node:util'
import { safeEqual } from './constant-time.ts'

const pbkdf2Async = promisify(pbkdf2)

// Bounds on the work one stored hash may ask for, so that an imported row cannot stall the
// service: a second or two at most. Django's own defaults stay below them (PBKDF2: 260,000
// iterations in 3.2, 1,000,000 in 5.2; bcrypt: cost 12), and BCRYPT_COST allows no more than 15 either.
export const MAX_PBKDF2_ITERATIONS = 2_000_000
export const MAX_BCRYPT_COST = 15
// Django's PBKDF2 hasher has never written fewer (10,000 in 1.4, its first release with it): a
// hash of fewer iterations was not made by Django, and is a fraction of the work to crack.
export const MIN_PBKDF2_ITERATIONS = 10_000

const SUPPORTED = 'authgate verifies pbkdf2_sha256 and bcrypt_sha256'

// Django's encodings (django/contrib/auth/hashers.py): `pbkdf2_sha256$<iterations>$<salt>$<hash>`,
// the hash the standard base64 of 32 bytes; `bcrypt_sha256$` followed by a whole bcrypt hash.
// Salts never hold a `$` (Django asserts it when encoding).
const PBKDF2_SHA256 = /^pbkdf2_sha256\$([0-9]{1,10})\$([^$]+)\$([A-Za-z0-9+/]{43}=)$/
// node.bcrypt verifies the 2a and 2b variants, those Python's bcrypt writes for Django.
const BCRYPT_SHA256 = /^bcrypt_sha256\$(\$2[ab]\$([0-9]{2})\$[./A-Za-z0-9]{53})$/

type Parsed =
  | { algorithm: 'pbkdf2_sha256', iterations: number, salt: string, hash: string }
  | { algorithm: 'bcrypt_sha256', bcryptHash: string }

/** The parts of a hash authgate can verify, or why it cannot. */
function parse (encoded: string): Parsed | { why: string } {
  if (encoded === '') return { why: 'no password hash' }
  // make_password(None) and set_unusable_password(): no password can match.
  if (encoded.startsWith('!')) return { why: 'unusable password (the user could not sign in in Django either)' }
  const algorithm = encoded.slice(0, Math.max(0, encoded.indexOf('$')))
  if (algorithm === 'pbkdf2_sha256') {
    const [, iterations, salt, hash] = PBKDF2_SHA256.exec(encoded) ?? []
    if (iterations === undefined || salt === undefined || hash === undefined) return { why: 'malformed pbkdf2_sha256 hash' }
    const count = Number(iterations)
    if (count < MIN_PBKDF2_ITERATIONS || count > MAX_PBKDF2_ITERATIONS) {
      return { why: `pbkdf2_sha256 hash of ${count} iterations, outside authgate's bounds (${MIN_PBKDF2_ITERATIONS} to ${MAX_PBKDF2_ITERATIONS}: Django never wrote fewer)` }
    }
    return { algorithm, iterations: count, salt, hash }
  }
  if (algorithm === 'bcrypt_sha256') {
    const [, bcryptHash, cost] = BCRYPT_SHA256.exec(encoded) ?? []
    if (bcryptHash === undefined || cost === undefined) return { why: 'malformed bcrypt_sha256 hash' }
    if (Number(cost) < 4 || Number(cost) > MAX_BCRYPT_COST) {
      return { why: `bcrypt_sha256 hash of cost ${Number(cost)}, outside authgate's bounds (4 to ${MAX_BCRYPT_COST})` }
    }
    return { algorithm, bcryptHash }
  }
  return { why: algorithm === '' ? `not a Django password hash (${SUPPORTED})` : `${algorithm} hashes are not supported (${SUPPORTED})` }
}

/**
 * Whether `encoded` names a Django hasher authgate verifies (pbkdf2_sha256, bcrypt_sha256).
 * authgate's own bcrypt hashes (`$2b$…`) are not Django hashes. Decided by the algorithm name:
 * a malformed hash of these hashers still goes to verifyDjangoPassword, which refuses it.
 */
export function isDjangoHash (encoded: string): boolean {
  return encoded.startsWith('pbkdf2_sha256$') || encoded.startsWith('bcrypt_sha256$')
}

/**
 * Whether `password` matches the Django hash `encoded`, as Django's check_password decides
 * (https://docs.djangoproject.com/en/stable/topics/auth/passwords/). False, never an error,
 * for a malformed hash or one above authgate's bounds.
 */
export async function verifyDjangoPassword (password: string, encoded: string): Promise<boolean> {
  const parsed = parse(encoded)
  if ('why' in parsed) return false
  try {
    if (parsed.algorithm === 'pbkdf2_sha256') {
      // Django hashes the UTF-8 bytes of the password and of the salt into a key of sha256's
      // size, and compares the base64 texts: so does this.
      const derived = await pbkdf2Async(password, parsed.salt, parsed.iterations, 32, 'sha256')
      return safeEqual(derived.toString('base64'), parsed.hash)
    }
    // BCryptSHA256PasswordHasher: bcrypt of the hex sha256, so passwords past bcrypt's 72 bytes count in full.
    return await bcrypt.compare(createHash('sha256').update(password, 'utf8').digest('hex'), parsed.bcryptHash)
  } catch {
    return false
  }
}

/** Whether the importer may take `encoded`: only hashes that verifyDjangoPassword can check. */
export function importableHash (encoded: string): { ok: true } | { ok: false, why: string } {
  const parsed = parse(encoded)
  return 'why' in parsed ? { ok: false, why: parsed.why } : { ok: true }
}
