// What the gateway tests share: authgate, an upstream that echoes the headers it received, and the
// assertions that forward auth holds through a real gateway. Each *.test.ts brings only its gateway.
import { spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer as createHttpServer, type IncomingHttpHeaders } from 'node:http'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { type Test } from 'tap'
import { bearer, build, claimsOf, login } from './helper.ts'
import { listensOn } from './server-process.ts'

export const HOST = '127.0.0.1'
// How long a gateway, a request through it or a line of its log may take before a test calls it
// a hang: far above any slow run (a loaded 2-core machine), never a measure of speed.
export const WAIT_MS = 30_000

/** A gateway process, started in front of authgate and the upstream. */
export interface Started {
  child: ChildProcess
  /** Stops the gateway by its own pid. */
  stop: () => Promise<void>
  /** What the gateway said, for the error when it does not answer. */
  output: () => Promise<string>
}

export interface GatewayUnderTest {
  /** Names the temporary folder and the error when it does not answer. */
  name: string
  /** Spawns the gateway on HOST:port, with everything it writes inside `dir`. */
  start: (dir: string, port: number, authgate: number, upstream: number) => Promise<Started>
}

async function freePort (): Promise<number> {
  const server = createServer().listen(0, HOST)
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  server.close()
  await once(server, 'close')
  return port
}

async function answers (port: number): Promise<boolean> {
  const socket = connect(port, HOST)
  try {
    await once(socket, 'connect')
    return true
  } catch {
    return false
  } finally {
    socket.destroy()
  }
}

/** Stops a child by its own pid: `signal`, then SIGKILL if it has not exited within WAIT_MS. */
export async function stop (child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill(signal)
  const timer = setTimeout(() => child.kill('SIGKILL'), WAIT_MS)
  await exited
  clearTimeout(timer)
}

/** An upstream app on HOST: answers the headers it received as JSON, and keeps them. */
export interface Upstream { url: string, port: number, saw: IncomingHttpHeaders[] }

/** The upstream, closed at teardown. */
export async function echoUpstream (t: Test): Promise<Upstream> {
  const saw: IncomingHttpHeaders[] = []
  const upstream = createHttpServer((req, res) => {
    saw.push(req.headers)
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(req.headers))
  }).listen(0, HOST)
  await once(upstream, 'listening')
  t.teardown(async () => {
    upstream.closeAllConnections()
    upstream.close()
    await once(upstream, 'close')
  })
  const { port } = upstream.address() as AddressInfo
  return { url: `http://${HOST}:${port}`, port, saw }
}

/** Debian's nginx, in /usr/sbin, which a non-root PATH may lack; undefined when there is none. */
export const nginxBinary = ['nginx', '/usr/sbin/nginx'].find((bin) => spawnSync(bin, ['-v']).status === 0)

/** An nginx.conf whose every file is inside `dir`, running in the foreground, with `server` as its one server block. */
export function nginxConfig (dir: string, server: string): string {
  return `
# As root the workers would switch to "nobody", who cannot read this private folder.
${process.getuid?.() === 0 ? 'user root;' : ''}
daemon off;
master_process on;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} info;
events { worker_connections 64; }
http {
  access_log ${join(dir, 'access.log')};
  client_body_temp_path ${join(dir, 'client_body')};
  proxy_temp_path ${join(dir, 'proxy')};
  fastcgi_temp_path ${join(dir, 'fastcgi')};
  uwsgi_temp_path ${join(dir, 'uwsgi')};
  scgi_temp_path ${join(dir, 'scgi')};
  server {
${server}
  }
}
`
}

interface Gateway {
  url: string
  /** The headers of each request that reached the upstream, in order. */
  upstreamSaw: IncomingHttpHeaders[]
}

/** authgate, an upstream echoing the headers it received, and the gateway in front of both; all stopped at teardown. */
async function startGateway (t: Test, gateway: GatewayUnderTest): Promise<Gateway & { app: Awaited<ReturnType<typeof build>> }> {
  // Teardowns run last-registered first: the gateway stops before its folder goes.
  const dir = await mkdtemp(join(tmpdir(), `authgate-${gateway.name}-`))
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  const app = await build(t)
  await app.listen({ host: HOST, port: 0 })
  const authgate = (app.server.address() as AddressInfo).port

  const upstream = await echoUpstream(t)
  const upstreamSaw = upstream.saw

  // Up once the gateway itself listens on its port (listensOn) and answers; a start that lost
  // its port to another test's server between freePort() and its bind is made again on another.
  let port = 0
  for (let attempt = 1; ; attempt++) {
    port = await freePort()
    const started = await gateway.start(dir, port, authgate, upstream.port)
    t.teardown(started.stop)
    const deadline = Date.now() + WAIT_MS
    while (started.child.exitCode === null && !(await listensOn(started.child.pid, port) && await answers(port))) {
      if (Date.now() > deadline) throw new Error(`${gateway.name} did not answer on ${HOST}:${port} within ${WAIT_MS} ms: ${await started.output()}`)
      await sleep(50)
    }
    if (started.child.exitCode === null) break
    const why = await started.output()
    if (attempt >= 5 || !/address already in use|could not bind/i.test(why)) throw new Error(`${gateway.name} exited (${started.child.exitCode}): ${why}`)
  }
  return { app, url: `http://${HOST}:${port}`, upstreamSaw }
}

/** The headers the upstream received, as it echoed them. */
const echoed = async (res: Response): Promise<Record<string, string>> => await res.json() as Record<string, string>

/** A request through the gateway, bounded by WAIT_MS. */
function through (gateway: Gateway, path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${gateway.url}${path}`, { ...init, signal: AbortSignal.timeout(WAIT_MS) })
}

/** Starts `under` in front of authgate and an echoing upstream, and proves forward auth through it. */
export async function proveForwardAuth (t: Test, under: GatewayUnderTest): Promise<void> {
  const gateway = await startGateway(t, under)
  const { app } = gateway

  t.test('no token: the gateway answers 401 and the upstream is never called', async (t) => {
    const before = gateway.upstreamSaw.length
    const res = await through(gateway, '/orders')
    t.equal(res.status, 401)
    t.match(res.headers.get('www-authenticate'), /^Bearer/, 'the challenge from authgate reaches the client')
    t.equal(gateway.upstreamSaw.length, before)
  })

  t.test('a valid token: 200, and the upstream sees the identity from authgate', async (t) => {
    const { access, user } = await login(app)
    const res = await through(gateway, '/orders', { headers: bearer(access) })
    t.equal(res.status, 200)
    const saw = await echoed(res)
    t.equal(saw['x-auth-user-id'], String(user.id))
    t.equal(saw['x-auth-username'], user.username)
    t.equal(saw['x-auth-email'], user.email)
    t.equal(saw['x-auth-session-id'], claimsOf(access).sid)
  })

  t.test('the access cookie works as the Bearer header does', async (t) => {
    const { access, user } = await login(app)
    const res = await through(gateway, '/orders', { headers: { cookie: `__Host-access_token=${access}` } })
    t.equal(res.status, 200)
    t.equal((await echoed(res))['x-auth-user-id'], String(user.id))
  })

  t.test('identity headers sent by the client without a token: 401, the upstream is never called', async (t) => {
    const before = gateway.upstreamSaw.length
    const res = await through(gateway, '/orders', { headers: { 'x-auth-user-id': '1', 'x-auth-username': 'admin' } })
    t.equal(res.status, 401)
    t.equal(gateway.upstreamSaw.length, before)
  })

  t.test('a forged identity header beside a valid token: the upstream sees only the token\'s user', async (t) => {
    const victim = await login(app)
    const b = await login(app)
    const res = await through(gateway, '/orders', {
      headers: { ...bearer(b.access), 'x-auth-user-id': String(victim.user.id), 'x-auth-email': victim.user.email }
    })
    t.equal(res.status, 200)
    const saw = await echoed(res)
    // One value, not "B, victim": nginx replaces the client's header instead of adding to it, and with
    // Caddy the client's header never reaches the upstream.
    t.equal(saw['x-auth-user-id'], String(b.user.id))
    t.equal(saw['x-auth-email'], b.user.email)
  })

  t.test('identity headers spelt with underscores never reach the upstream (WSGI, CGI and PHP read them as the real ones)', async (t) => {
    const { access, user } = await login(app)
    const forged = { X_Auth_User_Id: '999', 'X-Auth_User-Id': '998', X_AUTH_EMAIL: 'admin@example.com', 'X-Auth-Username_': 'admin' }
    const res = await through(gateway, '/orders', { headers: { ...bearer(access), ...forged } })
    t.equal(res.status, 200)
    const saw = await echoed(res)
    const identityLike = Object.keys(saw).filter((name) => name.replaceAll('_', '-').startsWith('x-auth-'))
    t.same(identityLike.sort(), ['x-auth-email', 'x-auth-session-id', 'x-auth-user-id', 'x-auth-username'], 'only the gateway\'s own')
    t.equal(saw['x-auth-user-id'], String(user.id))
  })

  t.test('/api/ goes to authgate: login through the gateway', async (t) => {
    const { user } = await login(app)
    const res = await through(gateway, '/api/auth/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ identifier: user.username, password: user.password })
    })
    t.equal(res.status, 200)
    const { access } = await res.json() as { access: string }
    t.equal(claimsOf(access).user_id, user.id)
    t.equal((await through(gateway, '/orders', { headers: bearer(access) })).status, 200)
  })

  t.test('logout through the gateway: the same token is refused at once', async (t) => {
    const { access } = await login(app)
    t.equal((await through(gateway, '/orders', { headers: bearer(access) })).status, 200)
    const logout = await through(gateway, '/api/auth/logout', {
      method: 'POST',
      headers: { ...bearer(access), 'content-type': 'application/json' },
      body: '{}'
    })
    t.equal(logout.status, 204)
    const before = gateway.upstreamSaw.length
    t.equal((await through(gateway, '/orders', { headers: bearer(access) })).status, 401)
    t.equal(gateway.upstreamSaw.length, before, 'the upstream is not called')
  })

  t.test('a session ended from another session of the same user is refused at once', async (t) => {
    const laptop = await login(app)
    const phone = await login(app, laptop.user)
    t.equal((await through(gateway, '/orders', { headers: bearer(laptop.access) })).status, 200)
    const revoke = await through(gateway, `/api/auth/sessions/${String(claimsOf(laptop.access).sid)}`, {
      method: 'DELETE',
      headers: bearer(phone.access)
    })
    t.equal(revoke.status, 204)
    t.equal((await through(gateway, '/orders', { headers: bearer(laptop.access) })).status, 401)
    t.equal((await through(gateway, '/orders', { headers: bearer(phone.access) })).status, 200, 'the other session goes on')
  })
}
