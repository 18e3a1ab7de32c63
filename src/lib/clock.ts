import { sql, type RawBuilder } from 'kysely'

/** The two clocks authgate reads; tests replace both with one they move. */
export interface Clock {
  /** The application's time: a token's iat and exp, and their checks. */
  now: () => Date
  /**
   * The database's time when the statement runs (`clock_timestamp()`, not the transaction's
   * start): one clock for every replica, for session and rotation times and the reuse grace.
   */
  db: () => RawBuilder<Date>
}

export const systemClock: Clock = {
  now: () => new Date(),
  db: () => sql<Date>`clock_timestamp()`
}
