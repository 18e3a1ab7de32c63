import { sql, type RawBuilder } from 'kysely'

/** The keys of authgate's advisory locks ("authgat" in ASCII, then a number). */
export const LOCK_KEYS = {
  /** Held by every change of the signing keys: replicas starting together make one key. */
  signingKeys: 0x6175746867617401n,
  /** Held by a flush of ended sessions: one replica at a time. */
  flush: 0x6175746867617402n
} as const

/**
 * A lock key as SQL, a bigint literal: pg_advisory_xact_lock(bigint) is then an exact match in
 * pg_catalog, which a function another role plants in a schema of the search path cannot
 * outrank (hashtext() gave an integer, which a planted pg_advisory_xact_lock(integer) matched better).
 */
export function lockKey (name: keyof typeof LOCK_KEYS): RawBuilder<unknown> {
  return sql`cast(${sql.lit(LOCK_KEYS[name])} as bigint)`
}
