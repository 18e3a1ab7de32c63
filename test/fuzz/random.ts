/**
 * A seeded source of randomness for the fuzz test: mulberry32
 * (https://gist.github.com/tommyettinger/46a874533244883189143505d203312c), a 32-bit PRNG that
 * is small, fast and well studied; the same seed always gives the same requests.
 */
export class Random {
  #state: number

  constructor (seed: number) {
    this.#state = seed >>> 0
  }

  /** A float in [0, 1). */
  next (): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0
    let z = this.#state
    z = Math.imul(z ^ (z >>> 15), z | 1)
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61)
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296
  }

  /** An integer in [min, max]. */
  int (min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1))
  }

  /** True with probability p. */
  chance (p: number): boolean {
    return this.next() < p
  }

  pick<T> (items: readonly T[]): T {
    return items[this.int(0, items.length - 1)] as T
  }

  /** A size skewed towards small ones, now and then up to `max`. */
  size (max: number): number {
    const r = this.next()
    if (r < 0.6) return this.int(0, Math.min(16, max))
    if (r < 0.9) return this.int(0, Math.min(256, max))
    return this.int(0, max)
  }

  bytes (length: number): Buffer {
    const out = Buffer.alloc(length)
    for (let i = 0; i < length; i++) out[i] = this.int(0, 255)
    return out
  }

  /** A string of `length` characters drawn from `alphabet`. */
  string (length: number, alphabet: string): string {
    let out = ''
    for (let i = 0; i < length; i++) out += alphabet[this.int(0, alphabet.length - 1)]
    return out
  }
}
