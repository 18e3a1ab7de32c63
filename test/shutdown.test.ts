import { once } from 'node:events'
import { Agent, request, type IncomingHttpHeaders } from 'node:http'
import { connect } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { becomesReady, build, freshDatabase, login, serverEnv, uniqueUser } from './helper.ts'
import { startServer, type ServerProcess } from './server-process.ts'

interface Outcome {
  path: string
  sentAt: number
  doneAt: number
  status?: number
  headers?: IncomingHttpHeaders
  body?: string
  /** The client error, when there was no answer. */
  error?: string
}

/** One request on `agent`; an answer or the error, never a throw. */
function send (agent: Agent, url: string, path: string, init: { method?: string, headers?: Record<string, string>, body?: string } = {}): Promise<Outcome> {
  const sentAt = Date.now()
  return new Promise((resolve) => {
    const req = request(`${url}${path}`, { agent, method: init.method ?? 'GET', headers: init.headers }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ path, sentAt, doneAt: Date.now(), status: res.statusCode, headers: res.headers, body }))
      res.on('error', (error: NodeJS.ErrnoException) => resolve({ path, sentAt, doneAt: Date.now(), error: error.code ?? error.message }))
    })
    req.on('error', (error: NodeJS.ErrnoException) => resolve({ path, sentAt, doneAt: Date.now(), error: error.code ?? error.message }))
    req.end(init.body)
  })
}

const isShuttingDown = (o: Outcome): boolean => {
  if (o.status !== 503 || o.headers?.['content-type'] !== 'application/problem+json; charset=utf-8') return false
  const body = JSON.parse(o.body ?? '{}')
  return body.status === 503 && body.code === 'service_unavailable' && /shutting down/.test(body.detail) &&
    // Helmet's headers, on this answer too.
    o.headers['x-content-type-options'] === 'nosniff' && o.headers['content-security-policy'] === "default-src 'none';frame-ancestors 'none'"
}

/** The time (ms since the epoch) of the first log line with `msg` starting so. */
function loggedAt (server: ServerProcess, msg: string): number | undefined {
  for (const line of server.output().split('\n')) {
    if (!line.startsWith('{')) continue
    const entry = JSON.parse(line)
    if (typeof entry.msg === 'string' && entry.msg.startsWith(msg)) return entry.time
  }
  return undefined
}

t.test('drain() turns readiness to 503 while every other request is still served', async (t) => {
  const app = await build(t)
  const { access } = await login(app)
  t.equal(app.draining, false)
  t.equal((await app.inject({ url: '/health/ready' })).statusCode, 200)
  app.drain()
  t.equal(app.draining, true)
  const ready = await app.inject({ url: '/health/ready' })
  t.equal(ready.statusCode, 503)
  t.equal(ready.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.match(ready.json(), { status: 503, code: 'service_unavailable', detail: 'The service is shutting down; try again shortly.' })
  t.equal(ready.headers['x-content-type-options'], 'nosniff', 'with the security headers')
  t.equal((await app.inject({ url: '/health/live' })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/detail', headers: { authorization: `Bearer ${access}` } })).statusCode, 200)
})

t.test('SIGTERM during a stream of requests: drain, close, and no request in flight fails', async (t) => {
  const database = await freshDatabase(t)
  const server = startServer(serverEnv(database, { SHUTDOWN_DRAIN_DELAY: '1s', BCRYPT_COST: '8' }))
  t.teardown(() => { server.child.kill('SIGKILL') })
  const url = await server.listening

  const setup = new Agent({ keepAlive: false })
  const user = uniqueUser('drain')
  const json = { 'content-type': 'application/json' }
  t.equal((await send(setup, url, '/api/auth/register', { method: 'POST', headers: json, body: JSON.stringify(user) })).status, 201)
  const credentials = JSON.stringify({ identifier: user.username, password: user.password })
  const signedIn = await send(setup, url, '/api/auth/login', { method: 'POST', headers: json, body: credentials })
  t.equal(signedIn.status, 200)
  const { access } = JSON.parse(signedIn.body ?? '{}')

  // Eight keep-alive streams: detail (a token and a session lookup), live, and login (bcrypt).
  const kinds = [
    { path: '/api/detail', init: { headers: { authorization: `Bearer ${access}` } } },
    { path: '/health/live', init: {} },
    { path: '/api/auth/login', init: { method: 'POST', headers: json, body: credentials } }
  ]
  const outcomes: Outcome[] = []
  const traffic = { stopped: false }
  const agents: Agent[] = []
  const stream = async (i: number): Promise<void> => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 })
    agents.push(agent)
    const { path, init } = kinds[i % kinds.length]!
    while (!traffic.stopped) {
      const outcome = await send(agent, url, path, init)
      outcomes.push(outcome)
      if (outcome.error === 'ECONNREFUSED') return
    }
  }
  const readiness: Outcome[] = []
  const probe = async (): Promise<void> => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 })
    agents.push(agent)
    while (!traffic.stopped) {
      const outcome = await send(agent, url, '/health/ready')
      readiness.push(outcome)
      if (outcome.error === 'ECONNREFUSED') return
      await sleep(10)
    }
  }
  t.teardown(() => { for (const agent of agents) agent.destroy() })

  // A keep-alive connection left idle: its next request comes once the server closes.
  const idle = connect(Number(new URL(url).port), '127.0.0.1')
  t.teardown(() => { idle.destroy() })
  await once(idle, 'connect')
  let idleReceived = ''
  idle.setEncoding('utf8').on('data', (chunk: string) => { idleReceived += chunk })
  // A reset shows as no answer below.
  idle.on('error', () => {})
  idle.write('GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n')
  while (!idleReceived.includes('{"status":"ok"}')) await sleep(5)
  idleReceived = ''

  const running = [...Array.from({ length: 8 }, (_, i) => stream(i)), probe()]
  // SIGTERM comes amid a stream: once fifty requests were answered, however long a loaded
  // machine takes for them (a fixed wait gave fewer under load, and nothing to drain).
  while (outcomes.filter((o) => o.status === 200).length < 50) await sleep(5)
  const sigtermAt = Date.now()
  const exited = once(server.child, 'exit')
  server.child.kill('SIGTERM')

  // Once the server closes, the idle connection's next request is answered, not reset.
  while (loggedAt(server, 'closing') === undefined && server.child.exitCode === null) await sleep(2)
  idle.write('GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n')
  await Promise.race([once(idle, 'close'), sleep(3000)])

  const [code] = await exited
  traffic.stopped = true
  await Promise.all(running)
  t.equal(code, 0, 'exit code 0')

  const drainingAt = loggedAt(server, 'draining')
  const closingAt = loggedAt(server, 'closing')
  const closedAt = loggedAt(server, 'closed')
  t.ok(drainingAt !== undefined && closingAt !== undefined && closedAt !== undefined, 'a log line for each phase')
  t.ok(drainingAt! <= closingAt! && closingAt! <= closedAt!, 'draining, closing, closed, in order')
  // Timers are measured on the monotonic clock, log times on the wall clock: a millisecond or two apart.
  t.ok(closingAt! - drainingAt! >= 990, `the drain lasted SHUTDOWN_DRAIN_DELAY (${closingAt! - drainingAt!} ms)`)

  const failed = [...outcomes, ...readiness].filter((o) => o.error !== undefined && o.error !== 'ECONNREFUSED')
  t.same(failed, [], 'no request was reset or left unanswered')
  const wrong = outcomes.filter((o) => o.status !== undefined && o.status !== 200 && !isShuttingDown(o))
  t.same(wrong, [], 'every answer is the normal one, or 503 problem+json once closing')
  // Judged at the server, on its own clock: when a request arrived there, not when the client
  // (its event loop as loaded as the machine) got round to sending it.
  const entries = server.output().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line))
  const arrived = new Map(entries.filter((entry) => entry.msg === 'incoming request').map((entry) => [entry.reqId, entry]))
  const refusedEarly = entries.filter((entry) => entry.msg === 'request completed' && entry.res?.statusCode === 503)
    .map((entry) => arrived.get(entry.reqId))
    .filter((incoming) => incoming?.req?.url !== '/health/ready' && incoming.time < closingAt!)
  t.same(refusedEarly, [], 'no request that reached the server before the close was refused')
  t.ok(entries.some((entry) => entry.msg === 'request completed' && entry.res?.statusCode === 200 && arrived.get(entry.reqId)?.time > drainingAt!), 'the server log holds the requests (so the check above has something to judge)')
  const servedWhileDraining = outcomes.filter((o) => o.status === 200 && o.sentAt > drainingAt! && o.doneAt < closingAt!)
  t.ok(servedWhileDraining.length > 0, `requests are served during the drain (${servedWhileDraining.length})`)

  t.ok(readiness.some(isShuttingDown), 'ready answers 503 problem+json, saying it shuts down')
  // Before the signal: 200, or a 503 of its database ping's own bound (500 ms), which a machine
  // loaded past its cores may pass (helper.ts, becomesReady); never that it shuts down.
  t.same(readiness.filter((o) => o.doneAt < sigtermAt && o.status !== 200 && (o.status !== 503 || isShuttingDown(o))), [], 'before the signal ready answered 200, or its ping\'s own 503, never that it shuts down')
  // Read at the server (the client's own timings include its load): every probe sent once the
  // drain had started is answered 503. How soon after the signal it starts is the event loop's
  // turn on a loaded machine: no test asserts a wall-clock time.
  t.comment(`ready turned 503 ${drainingAt! - sigtermAt} ms after SIGTERM`)
  t.same(readiness.filter((o) => o.sentAt > drainingAt! && o.status === 200), [], 'no probe sent during the drain was answered 200')

  t.match(idleReceived, /^HTTP\/1\.1 503 Service Unavailable\r\n/, 'the idle connection\'s request is answered 503')
  t.match(idleReceived, /\r\nconnection: close\r\n/i, 'with Connection: close')
  t.match(idleReceived, /"code":"service_unavailable"/)
  t.match(idleReceived, /\r\nx-content-type-options: nosniff\r\n/i)
})

t.test('SIGINT closes at once, without the drain', async (t) => {
  const database = await freshDatabase(t)
  // An hour's drain: had SIGINT drained, the test would hang (tap's timeout) instead of exiting.
  const server = startServer(serverEnv(database, { SHUTDOWN_DRAIN_DELAY: '1h' }))
  t.teardown(() => { server.child.kill('SIGKILL') })
  t.ok(await becomesReady(await server.listening))
  const exited = once(server.child, 'exit')
  server.child.kill('SIGINT')
  t.equal((await exited)[0], 0, 'exits 0 without the hour of drain')
  t.equal(loggedAt(server, 'draining'), undefined)
  t.ok(loggedAt(server, 'closed') !== undefined)
})
