import { execFile } from 'node:child_process'
import { access, readdir, readFile } from 'node:fs/promises'
import { setPriority } from 'node:os'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** How libuv's workers were lowered: SCHED_IDLE, nice alone, or not at all (not Linux). */
export type WorkerPriority = 'idle' | 'nice' | 'none'

/**
 * Lowers libuv's worker threads (bcrypt's hashing, file and DNS work) below the main thread,
 * which answers every request, so that a flood of logins takes only what the requests leave of
 * the cores and /api/detail's latency stays as it was.
 *
 * First nice 10, then SCHED_IDLE (sched(7)) by util-linux's `chrt`, since Node has no call for
 * it: a thread of that policy runs only on a core no other thread wants, a request's wake-up
 * takes its core at once, and the scheduler places wake-ups on a core running only such threads
 * as on an idle one. nice alone still left the main thread waiting behind bcrypt for up to a
 * few milliseconds (BENCHMARKS.md). Without `chrt`, nice 10 stays. Linux only (a thread id is a
 * process id to setpriority and sched_setscheduler); elsewhere nothing happens.
 */
export async function lowerWorkerPriority (nice = 10): Promise<WorkerPriority> {
  if (process.platform !== 'linux') return 'none'
  // libuv starts its pool with the first task given to it.
  await access(import.meta.dirname)
  const workers: string[] = []
  for (const tid of await readdir('/proc/self/task')) {
    const name = await readFile(`/proc/self/task/${tid}/comm`, 'utf8').catch(() => '')
    if (name.trim() !== 'libuv-worker') continue
    try {
      setPriority(Number(tid), nice)
      workers.push(tid)
    } catch {
      // A thread that ended meanwhile, or a system that refuses: the default priority stays.
    }
  }
  if (workers.length === 0) return 'none'
  const idle = await Promise.all(workers.map((tid) => run('chrt', ['--idle', '--pid', '0', tid], { timeout: 5000 }).then(() => true, () => false)))
  return idle.every(Boolean) ? 'idle' : 'nice'
}
