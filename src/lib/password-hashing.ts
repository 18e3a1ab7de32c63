import { availableParallelism } from 'node:os'
import { performance } from 'node:perf_hooks'
import pLimit from 'p-limit'

/**
 * How many password hashings (bcrypt, Django's PBKDF2) may run at once: as many as the cores,
 * but never every thread of libuv's pool (UV_THREADPOOL_SIZE, 4 unless set), which they share
 * with WebCrypto's signature checks (ID-token and passkey sign-ins), file reads and DNS: at
 * least one thread is always left to those. Hashings beyond it wait here, first come first
 * served, instead of in the pool's queue in front of everything else, where a login flood made
 * every other sign-in wait for the whole queue of password checks.
 */
export function hashingSlots (poolSize = Number(process.env.UV_THREADPOOL_SIZE) || 4, cores = availableParallelism()): number {
  return Math.max(1, Math.min(cores, poolSize - 1))
}

// The share of its time the event loop was at work (requests, not waiting) above which it is
// busy: then one slot fewer, so that a core stays free for it. A login flood alone left the
// loop at 0.03 to 0.14 where it was measured (the hashing is off it), and every core hashes;
// readers beside the flood (0.92 to 0.98) keep one core to themselves (BENCHMARKS.md: detail's
// p99 during a flood).
export const BUSY_LOOP = 0.25

// The event loop's utilization since the last reading, read again at most every 50 ms: at each
// hashing's start and end, so a quiet process reads nothing. Node counts as active the time the
// loop's thread waits for a core, not only the time it works: a machine loaded past its cores
// reads busy, and leaves that core too.
export function loopUtilization (read: () => { idle: number, active: number } = () => performance.eventLoopUtilization()): () => number {
  let last = read()
  let utilization = 0
  return () => {
    const now = read()
    const idle = now.idle - last.idle
    const active = now.active - last.active
    if (idle + active < 50) return utilization
    last = now
    utilization = active / (idle + active)
    return utilization
  }
}

/** Slots for password hashings: `slots` at once, one fewer while `utilization()` says the event loop is busy. */
export function hashingLimiter (slots: number, utilization: () => number = loopUtilization()) {
  const limit = pLimit(slots)
  // Read before a hashing takes a slot and as it gives its slot back: a lower limit lets no new
  // hashing start until one fewer run; a hashing at work is never stopped.
  const adapt = (): void => {
    const allowed = utilization() >= BUSY_LOOP ? Math.max(1, slots - 1) : slots
    if (limit.concurrency !== allowed) limit.concurrency = allowed
  }
  return {
    /** Runs `work` (password hashings and checks, one at a time within it) once a slot is free. */
    run: <T>(work: () => Promise<T>): Promise<T> => {
      adapt()
      return limit(async () => {
        try {
          return await work()
        } finally {
          adapt()
        }
      })
    },
    /** How many hashings run, how many wait for a slot, and how many may run now. */
    state: (): { running: number, waiting: number, allowed: number } => ({ running: limit.activeCount, waiting: limit.pendingCount, allowed: limit.concurrency })
  }
}

// One for the process, as the pool is.
const hashing = hashingLimiter(hashingSlots())

export const withHashingSlot = hashing.run
export const hashingState = hashing.state
