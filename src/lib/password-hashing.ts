import { availableParallelism } from 'node:os'
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

// One for the process, as the pool is.
const limit = pLimit(hashingSlots())

/** Runs `work` (password hashings and checks, one at a time within it) once a slot is free. */
export const withHashingSlot = <T>(work: () => Promise<T>): Promise<T> => limit(work)

/** How many hashings run, and how many wait for a slot. */
export const hashingState = (): { running: number, waiting: number } => ({ running: limit.activeCount, waiting: limit.pendingCount })
