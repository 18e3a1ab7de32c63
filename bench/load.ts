// One autocannon run and what the bench keeps of it. Throughput and latency are taken from
// each connection's own `response` events (hrtime, sub-millisecond) rather than autocannon's
// histogram (whole milliseconds): a p99 of 3 ms against 4 ms is the difference that matters.
import autocannon, { type Client, type Options } from 'autocannon'
import { connect } from 'node:net'

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
  /** CPU time of the bench process (the load generator) per answer, in µs. */
  benchCpuUs?: number
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

/**
 * The answers of one run as they come, and the run's figures made of them: throughput over the
 * steady window (after `ramp` seconds), the percentiles of the 2xx answers' latencies, the bench
 * process's CPU per answer.
 */
class Tally {
  readonly #latencies: number[] = []
  readonly #completed: number[] = []
  readonly #statuses = new Map<number, number>()
  readonly #start = performance.now()
  readonly #cpu = process.cpuUsage()
  #answers = 0
  #non2xx = 0

  /** An answer of `status`, `ms` after its request, arrived at `at`. */
  answered (status: number, ms: number, at = performance.now()): void {
    this.#answers++
    if (status < 200 || status > 299) {
      this.#non2xx++
      this.#statuses.set(status, (this.#statuses.get(status) ?? 0) + 1)
      return
    }
    this.#latencies.push(ms)
    this.#completed.push(at)
  }

  /** The run, ended at `end`. */
  run ({ end = performance.now(), ramp = 1, errors }: { end?: number, ramp?: number, errors: number }): Run {
    const spent = process.cpuUsage(this.#cpu)
    const windowStart = Math.min(this.#start + ramp * 1000, end - 1)
    const steady = this.#completed.filter((at) => at >= windowStart).length
    const latencies = this.#latencies.sort((a, b) => a - b)
    return {
      rps: steady / ((end - windowStart) / 1000),
      p50: quantile(latencies, 0.5),
      p99: quantile(latencies, 0.99),
      answers: this.#answers,
      non2xx: this.#non2xx,
      statuses: this.#statuses,
      errors,
      benchCpuUs: (spent.user + spent.system) / this.#answers
    }
  }
}

export async function load (spec: Load): Promise<Run> {
  const tally = new Tally()
  const options: Options = {
    url: spec.url,
    connections: spec.connections,
    duration: spec.duration,
    method: spec.method ?? 'GET',
    headers: spec.headers,
    body: spec.body,
    timeout: spec.timeout ?? 10,
    setupClient: (client) => {
      client.on('response', (statusCode: number, _bytes: number, responseTime: number) => tally.answered(statusCode, responseTime))
      spec.setupClient?.(client)
    }
  }
  const result = await autocannon(options)
  return tally.run({ ramp: spec.ramp, errors: result.errors })
}

/** One connection's requests in loadClosing: the next body, and what it does with each answer. */
export interface Chain {
  body: () => string
  onResponse: (status: number, body: string) => void
}

export interface ClosingLoad {
  url: string
  connections: number
  /** Seconds. */
  duration: number
  headers: Record<string, string>
  ramp?: number
  timeout?: number
  /** The chain of connection `index` (0 to connections - 1). */
  chain: (index: number) => Chain
}

/**
 * POSTs as load() counts them, for a server that closes the connection after every answer
 * (gunicorn's sync workers): autocannon writes its next request on the closing socket, counts
 * an error and sends the same body again on its next connection. Here each of `connections`
 * loops sends one request at a time, each on a new TCP connection (what any client of such a
 * server does), timed with hrtime from the request's start to its answer's end; answers after
 * `duration` are followed (the chain goes on) but not counted.
 */
export async function loadClosing (spec: ClosingLoad): Promise<Run> {
  const tally = new Tally()
  let errors = 0
  const url = new URL(spec.url)
  const timeoutMs = (spec.timeout ?? 10) * 1000
  const head = `POST ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\nconnection: close\r\n${Object.entries(spec.headers).map(([name, value]) => `${name}: ${value}\r\n`).join('')}`
  // A bare socket per request: the request written whole, the answer read to the server's close
  // (it closes every connection), its status line and body (all after the headers: a chunked
  // answer is not decoded) taken apart here. Node's HTTP client costs the bench process more
  // CPU, which the server under test, on the same cores, would lose.
  const send = (body: string): Promise<{ status: number, body: string, ms: number } | undefined> => new Promise((resolve) => {
    const t0 = process.hrtime.bigint()
    const chunks: Buffer[] = []
    const socket = connect({ host: url.hostname, port: Number(url.port) })
    socket.setNoDelay(true)
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error('timeout')))
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    socket.on('error', () => resolve(undefined))
    socket.on('end', () => {
      const text = Buffer.concat(chunks).toString()
      const status = /^HTTP\/1\.[01] (\d{3}) /.exec(text)
      const split = text.indexOf('\r\n\r\n')
      if (status === null || split === -1) return resolve(undefined)
      resolve({ status: Number(status[1]), body: text.slice(split + 4), ms: Number(process.hrtime.bigint() - t0) / 1e6 })
    })
    socket.end(`${head}content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
  })
  const end = performance.now() + spec.duration * 1000
  await Promise.all(Array.from({ length: spec.connections }, async (_, index) => {
    const chain = spec.chain(index)
    while (performance.now() < end) {
      const answer = await send(chain.body())
      const at = performance.now()
      if (answer === undefined) {
        if (at < end) errors++
        continue
      }
      // The chain follows every answer; one after the end is not counted.
      chain.onResponse(answer.status, answer.body)
      if (at > end) break
      tally.answered(answer.status, answer.ms, at)
    }
  }))
  return tally.run({ end, ramp: spec.ramp, errors })
}
