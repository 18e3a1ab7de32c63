import { TtlCache } from './ttl-cache.ts'

export interface NotifiedCacheOptions {
  /** How long an entry is trusted at most, notifications or not. */
  ttlMs?: number
  maxEntries?: number
  /** How long after the last heartbeat of the notification channel the cache is still used. */
  heartbeatTimeoutMs?: number
  now?: () => number
}

/**
 * What a replica keeps of rows the database tells it about (src/db/notifications.ts): used only
 * while the notification channel beats (`heartbeat`), each entry at most `ttlMs`; every
 * invalidation bumps a generation, so a read that began before one is not stored after it.
 */
export class NotifiedCache<V> {
  readonly #entries: TtlCache<string, V>
  readonly #heartbeatTimeoutMs: number
  readonly #now: () => number
  #aliveUntil = 0
  #generation = 0

  constructor ({ ttlMs = 5000, maxEntries = 100_000, heartbeatTimeoutMs = 1000, now = Date.now }: NotifiedCacheOptions = {}) {
    this.#entries = new TtlCache({ ttlMs, max: maxEntries, now })
    this.#heartbeatTimeoutMs = heartbeatTimeoutMs
    this.#now = now
  }

  get size (): number {
    return this.#entries.size
  }

  get generation (): number {
    return this.#generation
  }

  /** Whether the notification channel answered lately: only then is the cache read or filled. */
  get live (): boolean {
    return this.#now() < this.#aliveUntil
  }

  heartbeat (): void {
    this.#aliveUntil = this.#now() + this.#heartbeatTimeoutMs
  }

  get (key: string): V | undefined {
    return this.live ? this.#entries.get(key) : undefined
  }

  /** Keeps a value read at `generation`, unless something was invalidated since. */
  set (key: string, value: V, generation: number): void {
    if (generation === this.#generation && this.live) this.#entries.set(key, value)
  }

  forget (key: string): void {
    this.#generation++
    this.#entries.delete(key)
  }

  forgetWhere (drop: (value: V) => boolean): void {
    this.#generation++
    this.#entries.deleteWhere(drop)
  }

  forgetAll (): void {
    this.#generation++
    this.#entries.clear()
  }

  /** Forgets everything, and stays unused until the next heartbeat: what was missed is unknown. */
  clear (): void {
    this.forgetAll()
    this.#aliveUntil = 0
  }
}
