// What PostgreSQL itself commits here: a durable one-row update by pgbench on the bench's own
// database (issue 31's yardstick for a refresh, which commits one rotation per request).
import { execFile } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import type { Run } from './load.ts'

const run = promisify(execFile)
/** The rows of the table: one per client, so that two clients meet on a row only by chance. */
export const COUNTER_ROWS = 32

/** The newest /usr/lib/postgresql/<version>/bin/pgbench, or undefined when there is none. */
export function findPgbench (root = '/usr/lib/postgresql'): string | undefined {
  let versions: string[]
  try {
    versions = readdirSync(root)
  } catch {
    return undefined
  }
  return versions.sort((a, b) => Number(b) - Number(a) || b.localeCompare(a))
    .map((version) => join(root, version, 'bin', 'pgbench'))
    .find((path) => existsSync(path))
}

export const UPDATE_SCRIPT = `\\set id random(1, ${COUNTER_ROWS})\nupdate bench_counter set n = n + 1 where id = :id;\n`

/**
 * The table of its own (bench_counter, COUNTER_ROWS rows) and the script file, in `folder`; and
 * the database's synchronous_commit as pgbench's sessions get it (nothing here sets it).
 */
export async function preparePgbench (databaseUrl: string, folder: string): Promise<{ script: string, synchronousCommit: string }> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  let synchronousCommit: string
  try {
    await client.query('create table bench_counter (id int primary key, n bigint not null default 0)')
    await client.query(`insert into bench_counter (id) select generate_series(1, ${COUNTER_ROWS})`)
    synchronousCommit = (await client.query<{ synchronous_commit: string }>('show synchronous_commit')).rows[0]!.synchronous_commit
  } finally {
    await client.end()
  }
  const script = join(folder, 'bench-counter.sql')
  await writeFile(script, UPDATE_SCRIPT)
  return { script, synchronousCommit }
}

/** The pgbench arguments of one run: `clients` clients, 2 threads, prepared statements, `seconds`, no vacuum (no pgbench_* tables). */
export const pgbenchArgs = (script: string, clients: number, seconds: number): string[] =>
  ['-n', '-M', 'prepared', '-c', String(clients), '-j', '2', '-T', String(seconds), '-f', script]

/**
 * One pgbench run as a Run: rps its tps (without the initial connection time, as pgbench prints
 * it), answers its transactions, non2xx its failed ones; no percentiles (pgbench prints only the
 * average latency, in `latencyMs`).
 */
export async function pgbenchRun (pgbench: string, args: string[], databaseUrl: string, seconds: number): Promise<Run & { latencyMs: number }> {
  // The database's URL as its last argument, its password (if any) in PGPASSWORD, out of ps.
  const url = new URL(databaseUrl)
  const password = decodeURIComponent(url.password)
  url.password = ''
  const env = { ...process.env, PGAPPNAME: 'authgate-bench-pgbench', ...(password === '' ? {} : { PGPASSWORD: password }) }
  const { stdout } = await run(pgbench, [...args, url.toString()], { timeout: (seconds + 60) * 1000, env })
  const number = (pattern: RegExp): number => {
    const match = pattern.exec(stdout)
    if (match === null) throw new Error(`pgbench printed no ${pattern.source}:\n${stdout}`)
    return Number(match[1])
  }
  const failed = /number of failed transactions: (\d+)/.exec(stdout)
  return {
    rps: number(/^tps = ([\d.]+)/m),
    p50: Number.NaN,
    p99: Number.NaN,
    latencyMs: number(/^latency average = ([\d.]+) ms/m),
    answers: number(/^number of transactions actually processed: (\d+)/m),
    non2xx: failed === null ? 0 : Number(failed[1]),
    statuses: new Map(),
    errors: 0
  }
}
