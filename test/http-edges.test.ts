import type { FastifyInstance } from 'fastify'
import { once } from 'node:events'
import { STATUS_CODES } from 'node:http'
import { connect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { SECURITY_HEADERS } from '../src/lib/security-headers.ts'
import { build, login } from './helper.ts'

// Requests inject cannot make (duplicate headers, broken framing, bytes that are not HTTP),
// sent over real sockets to check that every answer is problem+json with the security headers.

interface Answer { statusLine: string, headers: Record<string, string>, body: string }

/** The whole HTTP/1.x answers in `raw`, in order; each body is what its Content-Length says. */
function parseAnswers (raw: string): Answer[] {
  const answers: Answer[] = []
  for (let rest = raw; rest.includes('\r\n\r\n');) {
    const end = rest.indexOf('\r\n\r\n')
    const [statusLine = '', ...lines] = rest.slice(0, end).split('\r\n')
    const headers = Object.fromEntries(lines.map((line) => {
      const colon = line.indexOf(':')
      return [line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim()]
    }))
    const bodyEnd = end + 4 + Number(headers['content-length'] ?? 0)
    if (rest.length < bodyEnd) break
    answers.push({ statusLine, headers, body: rest.slice(end + 4, bodyEnd) })
    rest = rest.slice(bodyEnd)
  }
  return answers
}

interface Connection {
  socket: Socket
  /** Settles when the connection has closed, however it closed. */
  closed: Promise<void>
  /** The answers so far, once `count` of them are whole or the connection has closed. */
  answers: (count?: number) => Promise<Answer[]>
}

/** A connection to the app on the loopback, destroyed when the test ends whatever happens. */
async function open (t: Test, app: FastifyInstance): Promise<Connection> {
  const socket = connect({ host: '127.0.0.1', port: (app.server.address() as { port: number }).port })
  t.teardown(() => { socket.destroy() })
  // A reset after an answer (the server closing with bytes of ours unread) still leaves the
  // answer to check; a reset before it fails the checks on the answer.
  socket.on('error', () => {})
  // A server that leaves a connection open fails the test instead of stalling it.
  socket.setTimeout(5000, () => {
    t.fail('the server left the connection open')
    socket.destroy()
  })
  let received = ''
  socket.setEncoding('latin1').on('data', (chunk: string) => { received += chunk })
  // Not events.once: it rejects on the 'error' event, which can precede 'close' after an answer.
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  await once(socket, 'connect')
  return {
    socket,
    closed,
    answers: async (count = Infinity) => {
      while (parseAnswers(received).length < count && !socket.destroyed) {
        await Promise.race([closed, new Promise((resolve) => socket.once('data', resolve))])
      }
      return parseAnswers(received)
    }
  }
}

/** Sends `request` on a new connection; the one answer before the server closes it. */
async function exchange (t: Test, app: FastifyInstance, request: string | Buffer): Promise<Answer | undefined> {
  const connection = await open(t, app)
  connection.socket.write(request)
  const answers = await connection.answers()
  t.equal(answers.length, 1, 'one answer, then the connection closed')
  return answers[0]
}

/** The RFC 9457 shape, with the security headers helmet would have set. */
function assertProblem (t: Test, answer: Answer | undefined, status: number, code: string): void {
  if (answer === undefined) {
    t.fail('no answer')
    return
  }
  t.equal(answer.statusLine, `HTTP/1.1 ${status} ${STATUS_CODES[status]}`, 'status line')
  t.equal(answer.headers['content-type'], 'application/problem+json; charset=utf-8', 'content-type')
  t.match(JSON.parse(answer.body), { type: 'about:blank', title: STATUS_CODES[status], status, code, detail: String }, 'problem body')
  for (const [name, value] of Object.entries(SECURITY_HEADERS)) t.equal(answer.headers[name], value, name)
}

t.test('answers outside the happy path', async (t) => {
  const app = await build(t)
  await app.listen({ host: '127.0.0.1', port: 0 })

  t.test('a request with two Authorization headers is refused 400, never served', async (t) => {
    const { access } = await login(app)
    const control = await exchange(t, app, `GET /api/detail HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${access}\r\nConnection: close\r\n\r\n`)
    t.equal(control?.statusLine, 'HTTP/1.1 200 OK', 'control: the token alone is served')
    for (const [why, second] of [['the same token twice', access], ['a valid token and garbage', 'garbage']] as const) {
      const answer = await exchange(t, app,
        `GET /api/detail HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${access}\r\nAuthorization: Bearer ${second}\r\nConnection: close\r\n\r\n`)
      t.test(why, async (t) => assertProblem(t, answer, 400, 'bad_request'))
    }
  })

  const malformed: Array<[string, string | Buffer]> = [
    ['a bad chunk size', 'POST /api/auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'],
    ['an obs-fold header line', 'GET /health/live HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n'],
    // The start of a TLS 1.0 ClientHello record: someone speaking HTTPS to the plain port.
    ['a TLS ClientHello', Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, ...Buffer.alloc(32, 7)])]
  ]
  for (const [what, request] of malformed) {
    t.test(`${what} is answered 400 problem+json and the connection closed`, async (t) => {
      // No Connection: close: the server closes the connection of its own accord.
      assertProblem(t, await exchange(t, app, request), 400, 'bad_request')
    })
  }

  t.test('headers over the size limit are answered 431 problem+json', async (t) => {
    const answer = await exchange(t, app, `GET /health/live HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(20 * 1024)}\r\n\r\n`)
    assertProblem(t, answer, 431, 'headers_too_large')
  })

  for (const request of ['POST /% HTTP/1.1', 'GET /%zz HTTP/1.1']) {
    t.test(`a URL that cannot be decoded (${request}) is answered 400 without echoing it`, async (t) => {
      const answer = await exchange(t, app, `${request}\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`)
      assertProblem(t, answer, 400, 'bad_request')
      t.notMatch(answer?.body, '%', 'the URL is not in the body')
    })
  }

  t.test('an Expect other than 100-continue is answered 417 problem+json', async (t) => {
    const answer = await exchange(t, app, 'GET /health/live HTTP/1.1\r\nHost: a\r\nExpect: weird\r\n\r\n')
    t.not(answer?.body, '', 'a body')
    assertProblem(t, answer, 417, 'expectation_failed')
  })

  t.test('an HTTP/1.1 request without Host is answered 400 problem+json', async (t) => {
    assertProblem(t, await exchange(t, app, 'GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n'), 400, 'bad_request')
  })

  t.test('an HTTP/1.0 request without Host is served', async (t) => {
    const answer = await exchange(t, app, 'GET /health/live HTTP/1.0\r\n\r\n')
    t.equal(answer?.statusLine, 'HTTP/1.1 200 OK')
    t.same(JSON.parse(answer?.body ?? ''), { status: 'ok' })
  })

  t.test('the raw answers carry exactly the headers helmet sets', async (t) => {
    const res = await app.inject({ url: '/health/live' })
    t.equal(res.statusCode, 200)
    const notHelmet = new Set(['content-type', 'content-length', 'date', 'connection', 'keep-alive'])
    t.same(Object.fromEntries(Object.entries(res.headers).filter(([name]) => !notHelmet.has(name))), SECURITY_HEADERS)
  })
})

t.test('a request that arrives while the server closes is answered 503 problem+json', async (t) => {
  const app = await build(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  // close() runs the preClose hooks, then server.close(), which drops idle keep-alive
  // connections at once: a request sent on one of those afterwards never arrives. A request
  // the server has begun to read keeps its connection open. So: one keep-alive connection
  // with a request served and the next one half sent in the same write (read in one go: once
  // the first is answered, the second is begun), then close(); once another, idle connection
  // is dropped, the server is surely closing, and the rest of the second request is sent.
  const idle = await open(t, app)
  idle.socket.write('GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n')
  await idle.answers(1)
  const busy = await open(t, app)
  busy.socket.write('GET /health/live HTTP/1.1\r\nHost: a\r\n\r\nGET /health/live HTTP/1.1\r\nHost: a\r\n')
  t.equal((await busy.answers(1))[0]?.statusLine, 'HTTP/1.1 200 OK', 'the first request is served')
  const closed = app.close()
  await idle.closed
  busy.socket.write('\r\n')
  const answers = await busy.answers()
  t.equal(answers.length, 2, 'one more answer, then the connection closed')
  assertProblem(t, answers[1], 503, 'service_unavailable')
  await closed
})
