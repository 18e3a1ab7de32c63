import { randomBytes } from 'node:crypto'
import { readFileSync, readlinkSync } from 'node:fs'
import { link, open, readFile, rename, stat, unlink, utimes, type FileHandle } from 'node:fs/promises'
import { hostname } from 'node:os'
import { basename, join } from 'node:path'

/** The folder is held by a live process of authgate's: the message names it, `holder` says who when its file could be read. */
export class FolderLockedError extends Error {
  override name = 'FolderLockedError'
  readonly folder: string
  readonly holder: Pick<Holder, 'pid' | 'host' | 'command' | 'since'> | undefined
  constructor (message: string, folder: string, holder?: Holder) {
    super(message)
    this.folder = folder
    this.holder = holder
  }
}

/** Who holds a lock, as its file says. */
interface Holder {
  pid: number
  /** The process's start, in clock ticks since boot (/proc/<pid>/stat): a pid taken again by another process does not match. */
  started: string
  host: string
  /** The pid namespace (/proc/self/ns/pid): pids mean something only inside their own. */
  pidNamespace: string
  command: string
  since: string
}

export interface FolderLock { release: () => Promise<void> }

const LOCK_FILE = 'authgate.lock'
// A holder in another pid namespace (another container on a shared volume) cannot be asked
// whether it lives: it touches the file this often, and one silent for STALE_MS is gone.
const TOUCH_MS = 10_000
const STALE_MS = 30_000

function startOf (pid: number | 'self'): string {
  try {
    // Field 22, after the command in parentheses (which may hold spaces and parentheses itself).
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? ''
  } catch {
    return ''
  }
}

function pidNamespace (): string {
  try {
    return readlinkSync('/proc/self/ns/pid')
  } catch {
    return ''
  }
}

function self (): Holder {
  return {
    pid: process.pid,
    started: startOf('self'),
    host: hostname(),
    pidNamespace: pidNamespace(),
    command: [basename(process.argv[1] ?? process.argv0), ...process.argv.slice(2)].join(' '),
    since: new Date().toISOString()
  }
}

/** Whether the holder still runs: asked of the process itself in this pid namespace, else judged by the file's last touch. */
function alive (holder: Holder, touchedAt: number, us: Holder): boolean {
  if (holder.host !== us.host || holder.pidNamespace !== us.pidNamespace) return Date.now() - touchedAt < STALE_MS
  try {
    process.kill(holder.pid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false
  }
  return holder.started === '' || startOf(holder.pid) === holder.started
}

/** Who holds a folder, as a message says it: `process 4242 (server.ts, since …)`, with its host when it is another. */
export function holderName (holder: Pick<Holder, 'pid' | 'host' | 'command' | 'since'>): string {
  const where = holder.host === hostname() ? '' : ` on ${holder.host}`
  return `process ${holder.pid}${where} (${holder.command}, since ${holder.since})`
}

function describe (holder: Holder, folder: string): string {
  return `the data folder ${folder} is in use by ${holderName(holder)}: stop it first, or give this one another DB_NAME`
}

/**
 * Takes the lock of a data folder for this process, or throws FolderLockedError naming the
 * process that holds it. A lock left by a process that is gone (a crash, a kill -9, a container
 * restarted) is taken over.
 */
export async function lockFolder (folder: string): Promise<FolderLock> {
  const file = join(folder, LOCK_FILE)
  const us = self()
  for (let attempt = 0; attempt < 5; attempt++) {
    let handle: FileHandle | undefined
    try {
      handle = await open(file, 'wx', 0o600)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
    if (handle !== undefined) return await hold(handle, file, us)

    const [text, touched] = await Promise.all([readFile(file, 'utf8').catch(() => undefined), stat(file).catch(() => undefined)])
    if (text === undefined || touched === undefined) continue
    let holder: Holder | undefined
    try {
      holder = JSON.parse(text) as Holder
    } catch {}
    // A file being written, or half written by a process that died: stale once it is old.
    if (holder === undefined ? Date.now() - touched.mtimeMs < STALE_MS : alive(holder, touched.mtimeMs, us)) {
      throw new FolderLockedError(holder === undefined ? `the data folder ${folder} is being locked by another process (${file})` : describe(holder, folder), folder, holder)
    }
    // Taken over: moved aside, and put back if what was moved is not what was judged stale
    // (another process took it over first).
    const aside = `${file}.stale-${randomBytes(4).toString('hex')}`
    await rename(file, aside).catch(() => {})
    const moved = await readFile(aside, 'utf8').catch(() => undefined)
    if (moved !== undefined && moved !== text) await link(aside, file).catch(() => {})
    await unlink(aside).catch(() => {})
  }
  throw new FolderLockedError(`the data folder ${folder} could not be locked: other processes are taking its lock (${file})`, folder)
}

async function hold (handle: FileHandle, file: string, us: Holder): Promise<FolderLock> {
  const text = JSON.stringify(us)
  await handle.writeFile(text)
  await handle.sync()
  const timer = setInterval(() => { utimes(file, new Date(), new Date()).catch(() => {}) }, TOUCH_MS).unref()
  let released = false
  return {
    async release () {
      if (released) return
      released = true
      clearInterval(timer)
      await handle.close()
      // Only our own: a lock taken over from us (we were judged gone) is the other's now.
      if (await readFile(file, 'utf8').catch(() => undefined) === text) await unlink(file).catch(() => {})
    }
  }
}
