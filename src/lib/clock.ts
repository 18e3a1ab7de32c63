import { sql, type RawBuilder } from 'kysely'

/** The two clocks authgate reads; tests replace both with one they move. */
export interface Clock {
  /** The application's time: a token's iat and exp, and their checks. */
  now: () => Date
  /** Seconds the database's time is moved by: 0 but for a test's clock. */
  offsetS: () => number
  /**
   * The database's time when the statement runs (`clock_timestamp()`, not the transaction's
   * start): one clock for every replica, for session and rotation times and the reuse grace.
   */
  db: () => RawBuilder<Date>
}

/** `clock_timestamp()` moved by `offsetS`, every operand of its own type: nothing resolves through the search path. */
export function databaseTime (offsetS: number): RawBuilder<Date> {
  return offsetS === 0 ? sql<Date>`clock_timestamp()` : sql<Date>`(clock_timestamp() + ${seconds(offsetS)})`
}

/** An interval of `value` seconds, as SQL: a typed literal times a typed number. */
export function seconds (value: number): RawBuilder<unknown> {
  return sql`(cast(${value} as double precision) * interval '1 second')`
}

/** A time as a JWT's NumericDate: whole seconds since the epoch. */
export const epochSeconds = (date: Date): number => Math.floor(date.getTime() / 1000)

export const systemClock: Clock = {
  now: () => new Date(),
  offsetS: () => 0,
  db: () => databaseTime(0)
}
