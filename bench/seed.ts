// The Django seed project authgate replaces (../shared/seed-django/ beside the repository), as a
// baseline in the same run: started and stopped with its own scripts (setup.sh, start.sh,
// stop.sh), never copied. Only with BENCH_SEED=1 (bench/run.ts).
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** The Debian packages its README names besides Django (setup.sh installs them with apt). */
export const SEED_PACKAGES = ['python3-djangorestframework', 'python3-djangorestframework-simplejwt', 'python3-psycopg2', 'gunicorn']

/** Those of SEED_PACKAGES that dpkg does not have installed. */
export async function missingSeedPackages (): Promise<string[]> {
  const missing: string[] = []
  for (const name of SEED_PACKAGES) {
    // dpkg-query's format: the package's ${Status} field.
    const status = await run('dpkg-query', ['-W', '-f=$' + '{Status}', name]).then(({ stdout }) => stdout, () => '')
    if (!status.endsWith('install ok installed')) missing.push(name)
  }
  return missing
}

export interface Seed {
  url: string
  /** stop.sh: SIGTERM to the gunicorn master of its pid file. */
  stop: () => Promise<void>
}

/**
 * setup.sh with SKIP_APT=1 (its role and database; the packages must be there already), then
 * start.sh: gunicorn on 127.0.0.1:`port`. Its scripts get a clean environment, so that none of
 * the bench's variables (DB_ENGINE, DATABASE_URL, SECRET_KEY) reach its settings; DB_CONN_MAX_AGE=60,
 * persistent database connections, as its README asks for a measurement.
 */
export async function startSeed (folder: string, port: number): Promise<Seed> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: process.env.HOME ?? '/root',
    LANG: 'C.UTF-8',
    SKIP_APT: '1',
    SEED_BIND: `127.0.0.1:${port}`,
    DB_CONN_MAX_AGE: '60'
  }
  const script = async (name: string): Promise<void> => {
    try {
      await run(join(folder, name), [], { cwd: folder, env, timeout: 120_000 })
    } catch (error) {
      const { stdout = '', stderr = '', message } = error as { stdout?: string, stderr?: string, message: string }
      throw new Error(`the seed's ${name} failed: ${(stderr + stdout).trim().split('\n').slice(-3).join(' / ') || message}`)
    }
  }
  // start.sh refuses to start a second one; stop.sh would stop whichever runs: the bench starts its own or none.
  const pidFile = join(folder, 'run', 'gunicorn.pid')
  if (existsSync(pidFile)) {
    const pid = Number(readFileSync(pidFile, 'utf8').trim())
    let alive = false
    try {
      alive = Number.isInteger(pid) && pid > 0 && process.kill(pid, 0)
    } catch {}
    if (alive) throw new Error(`the seed is running already (pid ${pid}, ${pidFile}): the bench measures only one it started itself`)
  }
  await script('setup.sh')
  try {
    await script('start.sh')
  } catch (error) {
    // A gunicorn that started but did not answer in time: its pid file is the bench's.
    await script('stop.sh').catch(() => {})
    throw error
  }
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () => script('stop.sh')
  }
}

/** Why the seed is not measured in this run, or undefined when it may be. */
export async function seedAbsence (folder: string, wanted: boolean): Promise<string | undefined> {
  if (!wanted) return 'not measured: BENCH_SEED=1 not set'
  if (!existsSync(join(folder, 'start.sh'))) return 'not measured: no ../shared/seed-django/ beside the repository'
  const missing = await missingSeedPackages()
  if (missing.length > 0) return `not measured: the seed's packages are missing (${missing.join(', ')})`
  return undefined
}
