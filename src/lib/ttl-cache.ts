export interface TtlCacheOptions {
  /** How long an entry is kept at most. */
  ttlMs: number
  /** How many entries at most: the oldest gives way. */
  max: number
  now?: () => number
}

/**
 * A map whose entries expire after `ttlMs` and of which at most `max` are kept, the oldest
 * going first (insertion order). Expired entries are dropped when met.
 */
export class TtlCache<K, V> {
  readonly #entries = new Map<K, { value: V, at: number }>()
  readonly #ttlMs: number
  readonly #max: number
  readonly #now: () => number

  constructor ({ ttlMs, max, now = Date.now }: TtlCacheOptions) {
    this.#ttlMs = ttlMs
    this.#max = max
    this.#now = now
  }

  get size (): number {
    return this.#entries.size
  }

  get (key: K): V | undefined {
    const entry = this.#entries.get(key)
    if (entry === undefined) return undefined
    if (this.#now() - entry.at > this.#ttlMs) {
      this.#entries.delete(key)
      return undefined
    }
    return entry.value
  }

  set (key: K, value: V): void {
    this.#entries.delete(key)
    if (this.#entries.size >= this.#max) this.#entries.delete(this.#entries.keys().next().value!)
    this.#entries.set(key, { value, at: this.#now() })
  }

  delete (key: K): void {
    this.#entries.delete(key)
  }

  /** Drops every entry `drop` picks. */
  deleteWhere (drop: (value: V, key: K) => boolean): void {
    for (const [key, entry] of this.#entries) if (drop(entry.value, key)) this.#entries.delete(key)
  }

  clear (): void {
    this.#entries.clear()
  }
}
