// What `npm run bench` prints and writes: the machine, the scenario table, the figures against
// their targets, and BENCHMARKS.md, whose hand-written notes section survives every run.
import { readFile, writeFile } from 'node:fs/promises'
import { availableParallelism, totalmem } from 'node:os'
import { readFileSync } from 'node:fs'

export interface ScenarioRow {
  scenario: string
  connections: number
  'req/s': string
  'vs floor': string
  'p50 ms': string
  'p99 ms': string
  'req/s by round': string
  non2xx: number
  errors: number
}

export interface Figure {
  figure: string
  measured: string
  target: string
  /** Undefined when the figure could not be measured (a broken scenario, or not on this engine); null when it has no target yet. */
  met: boolean | null | undefined
}

export interface Machine {
  cores: number
  cpu: string
  memory: string
  node: string
}

export function machine (): Machine {
  let cpu = 'unknown'
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpu
  } catch {}
  return {
    cores: availableParallelism(),
    cpu,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    node: process.version
  }
}

/** A process's resident set in MB (10^6 bytes), from /proc (Linux). */
export function rssMB (pid: number): number {
  const kB = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]
  if (kB === undefined) throw new Error(`no VmRSS for process ${pid}`)
  return Number(kB) * 1024 / 1e6
}

/** The command as it was run, with the settings that shape it and any password in a URL hidden. */
export function command (): string {
  const names = ['DB_ENGINE', 'DATABASE_URL', 'BCRYPT_COST', 'BENCH_ROUNDS', 'BENCH_DURATION', 'BENCH_CONNECTIONS',
    'BENCH_LOGIN_CONNECTIONS', 'BENCH_LOGIN_DURATION', 'BENCH_FLOOD_CONNECTIONS', 'BENCH_STARTS', 'BENCH_SEED']
  const settings = names.filter((name) => process.env[name] !== undefined).map((name) => {
    let value = process.env[name]!
    if (name === 'DATABASE_URL') {
      try {
        const url = new URL(value)
        if (url.password !== '') url.password = '***'
        value = url.toString()
      } catch {}
    }
    return `${name}=${value}`
  })
  return [...settings, process.env.npm_lifecycle_event === 'bench' ? 'npm run bench' : 'node bench/run.ts'].join(' ')
}

function markdownTable (rows: Array<Record<string, string | number>>): string {
  const columns = Object.keys(rows[0] ?? {})
  const line = (cells: Array<string | number>): string => `| ${cells.map((cell) => String(cell).replaceAll('|', '\\|')).join(' | ')} |`
  return [line(columns), line(columns.map(() => '---')), ...rows.map((row) => line(columns.map((column) => row[column] ?? '')))].join('\n')
}

/**
 * A ratio as the tables give it: three decimals, or three significant digits below 0.1, so that
 * a ratio that misses its target is never shown as the target (0.0197 against 0.02, not 0.020).
 */
export const ratio = (v: number): string => Math.abs(v) < 0.1 ? v.toPrecision(3) : v.toFixed(3)

export const yesNo = (met: boolean | null | undefined): string => met === null ? 'no target yet' : met === undefined ? 'not measured' : met ? 'yes' : 'NO'

const NOTES_START = '<!-- notes -->'
const NOTES_END = '<!-- /notes -->'
const DEFAULT_NOTES = `## What was tried and what each change gave

Written by hand: \`npm run bench\` rewrites everything in this file except this section.

## Top costs (profiles)

Written by hand as well.`

/** The hand-written section of an existing BENCHMARKS.md, kept verbatim. */
async function notes (path: string): Promise<string> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch {
    return DEFAULT_NOTES
  }
  const start = text.indexOf(NOTES_START)
  const end = text.indexOf(NOTES_END, start)
  if (start === -1 || end === -1) return DEFAULT_NOTES
  return text.slice(start + NOTES_START.length, end).replace(/^\n/, '').replace(/\n$/, '')
}

export interface Report {
  machine: Machine
  engine: string
  date: string
  command: string
  settings: string
  method: string[]
  scenarios: ScenarioRow[]
  figures: Figure[]
  problems: string[]
  seconds: number
}

export async function writeBenchmarks (path: string, report: Report): Promise<void> {
  const kept = await notes(path)
  const { machine: m } = report
  const text = `# Benchmarks

Written by \`npm run bench\` (bench/run.ts) at the end of each run; only the notes section
between the markers is written by hand and kept as it is.

## The run

- Date: ${report.date}
- Command: \`${report.command}\`
- Engine: ${report.engine}
- Machine: ${m.cores} cores (os.availableParallelism), ${m.cpu}, ${m.memory} memory
- Node: ${m.node}
- Settings: ${report.settings}
- Whole run: ${report.seconds.toFixed(0)} s

## Figures against their targets

${markdownTable(report.figures.map((f) => ({ figure: f.figure, measured: f.measured, target: f.target, met: yesNo(f.met) })))}
${report.problems.length === 0 ? '' : `\n**Broken scenarios (their figures are not given):**\n\n${report.problems.map((p) => `- ${p}`).join('\n')}\n`}
## Scenarios (medians of the rounds)

${markdownTable(report.scenarios as unknown as Array<Record<string, string | number>>)}

## How it is measured

${report.method.map((line) => `- ${line}`).join('\n')}

${NOTES_START}
${kept}
${NOTES_END}
`
  await writeFile(path, text)
}
