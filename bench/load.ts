// One autocannon run and what the bench keeps of it. Throughput and latency are taken from
// each connection's own `response` events (hrtime, sub-millisecond) rather than autocannon's
// histogram (whole milliseconds): a p99 of 3 ms against 4 ms is the difference that matters.
import autocannon, { type Client, type Options } from 'autocannon'

export interface Run {
  /** Successful (2xx) answers per second in the steady window (after the ramp). */
  rps: number
  p50: number
  p99: number
  /** Answers in the whole run, and those that were not 2xx. */
  answers: number
  non2xx: number
  /** How many answers each non-2xx status had. */
  statuses: Map<number, number>
  /** Connection errors and timeouts (autocannon's `errors` counts both). */
  errors: number
}

export interface Load {
  url: string
  connections: number
  /** Seconds. */
  duration: number
  method?: 'GET' | 'POST'
  headers?: Record<string, string>
  body?: string
  /** Seconds at the start that count for latency but not for throughput (a bcrypt queue fills first). */
  ramp?: number
  /** Answers the server may take longer for than autocannon's default 10 s. */
  timeout?: number
  /** Per connection, as autocannon's setupClient: its own requests (refresh chains). */
  setupClient?: (client: Client) => void
}

/** The value at quantile q of sorted numbers. */
export function quantile (sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? Number.NaN
}

export function median (values: number[]): number {
  const finite = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (finite.length === 0) return Number.NaN
  const middle = finite.length >> 1
  return finite.length % 2 === 1 ? finite[middle]! : (finite[middle - 1]! + finite[middle]!) / 2
}

export async function load (spec: Load): Promise<Run> {
  const latencies: number[] = []
  const completed: number[] = []
  let answers = 0
  let non2xx = 0
  const statuses = new Map<number, number>()
  const start = performance.now()
  const options: Options = {
    url: spec.url,
    connections: spec.connections,
    duration: spec.duration,
    method: spec.method ?? 'GET',
    headers: spec.headers,
    body: spec.body,
    timeout: spec.timeout ?? 10,
    setupClient: (client) => {
      client.on('response', (statusCode: number, _bytes: number, responseTime: number) => {
        answers++
        if (statusCode < 200 || statusCode > 299) {
          non2xx++
          statuses.set(statusCode, (statuses.get(statusCode) ?? 0) + 1)
          return
        }
        latencies.push(responseTime)
        completed.push(performance.now())
      })
      spec.setupClient?.(client)
    }
  }
  const result = await autocannon(options)
  const end = performance.now()
  const rampMs = (spec.ramp ?? 1) * 1000
  const windowStart = Math.min(start + rampMs, end - 1)
  const steady = completed.filter((at) => at >= windowStart).length
  latencies.sort((a, b) => a - b)
  return {
    rps: steady / ((end - windowStart) / 1000),
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
    answers,
    non2xx,
    statuses,
    errors: result.errors
  }
}
