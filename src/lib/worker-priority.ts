import { access, readdir, readFile } from 'node:fs/promises'
import { setPriority } from 'node:os'

/**
 * Lowers the priority of libuv's worker threads (bcrypt's hashing, file and DNS work) to
 * `nice`, so that the main thread, which answers every request, runs first when the cores are
 * busy: a flood of logins then takes the cores the requests leave, and /api/detail's latency
 * stays as it was. Linux only (a thread id is a process id to setpriority); elsewhere nothing
 * happens.
 */
export async function lowerWorkerPriority (nice = 10): Promise<void> {
  if (process.platform !== 'linux') return
  // libuv starts its pool with the first task given to it.
  await access(import.meta.dirname)
  for (const tid of await readdir('/proc/self/task')) {
    const name = await readFile(`/proc/self/task/${tid}/comm`, 'utf8').catch(() => '')
    if (name.trim() !== 'libuv-worker') continue
    try {
      setPriority(Number(tid), nice)
    } catch {
      // A thread that ended meanwhile, or a system that refuses: the default priority stays.
    }
  }
}
