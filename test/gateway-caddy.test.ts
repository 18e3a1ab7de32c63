import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer as createHttpServer, type IncomingHttpHeaders } from 'node:http'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { build, claimsOf, login } from './helper.ts'

const HOST = '127.0.0.1'
const WAIT_MS = 10_000

// Debian's `caddy` package.
const caddyBinary = '/usr/bin/caddy'
const hasCaddy = existsSync(caddyBinary)

const identity = ['X-Auth-User-Id', 'X-Auth-Username', 'X-Auth-Email', 'X-Auth-Session-Id']

/** The Caddyfile of the README's example: /api/* to authgate, everything else behind forward_auth. */
function caddyfile (dir: string, port: number, authgate: number, upstream: number): string {
  // No `persist_config off`: Caddy 2.6 (Debian bookworm) does not know it; its autosave.json goes to
  // XDG_CONFIG_HOME, inside the temporary folder.
  return `{
  admin off
  auto_https off
  storage file_system ${join(dir, 'data')}
}
http://${HOST}:${port} {
  handle /api/* {
    reverse_proxy ${HOST}:${authgate}
  }
  handle {
    forward_auth ${HOST}:${authgate} {
      uri /api/auth/check
      copy_headers ${identity.join(' ')}
    }
    reverse_proxy ${HOST}:${upstream}
  }
}
`
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
async function stop (child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill(signal)
  const timer = setTimeout(() => child.kill('SIGKILL'), WAIT_MS)
  await exited
  clearTimeout(timer)
}

interface Gateway {
  url: string
  /** The headers of each request that reached the upstream, in order. */
  upstreamSaw: IncomingHttpHeaders[]
}

/** authgate, an upstream echoing the headers it received, and Caddy in front of both; all stopped at teardown. */
async function startGateway (t: Test): Promise<Gateway & { app: Awaited<ReturnType<typeof build>> }> {
  // Teardowns run last-registered first: Caddy stops before its folder goes.
  const dir = await mkdtemp(join(tmpdir(), 'authgate-caddy-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  const app = await build(t)
  await app.listen({ host: HOST, port: 0 })
  const authgate = (app.server.address() as AddressInfo).port

  const upstreamSaw: IncomingHttpHeaders[] = []
  const upstream = createHttpServer((req, res) => {
    upstreamSaw.push(req.headers)
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(req.headers))
  }).listen(0, HOST)
  await once(upstream, 'listening')
  t.teardown(async () => {
    upstream.closeAllConnections()
    upstream.close()
    await once(upstream, 'close')
  })

  const port = await freePort()
  const conf = join(dir, 'Caddyfile')
  await writeFile(conf, caddyfile(dir, port, authgate, (upstream.address() as AddressInfo).port))
  // Caddy keeps its data and config under HOME / XDG_*: all inside the temporary folder.
  const env = { ...process.env, HOME: dir, XDG_DATA_HOME: join(dir, 'xdg-data'), XDG_CONFIG_HOME: join(dir, 'xdg-config') }
  const caddy = spawn(caddyBinary, ['run', '--config', conf, '--adapter', 'caddyfile'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  const collect = (chunk: Buffer): void => { output += chunk.toString() }
  caddy.stdout?.on('data', collect)
  caddy.stderr?.on('data', collect)
  // Graceful stop on SIGTERM, SIGKILL after WAIT_MS.
  t.teardown(() => stop(caddy, 'SIGTERM'))

  const deadline = Date.now() + WAIT_MS
  while (!await answers(port)) {
    if (caddy.exitCode !== null || Date.now() > deadline) {
      throw new Error(`caddy did not answer on ${HOST}:${port} within ${WAIT_MS} ms: ${output}`)
    }
    await sleep(50)
  }
  return { app, url: `http://${HOST}:${port}`, upstreamSaw }
}

/** The headers the upstream received, as it echoed them. */
const echoed = async (res: Response): Promise<Record<string, string>> => await res.json() as Record<string, string>

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

/** A request through the gateway, bounded by WAIT_MS. */
function through (gateway: Gateway, path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${gateway.url}${path}`, { ...init, signal: AbortSignal.timeout(WAIT_MS) })
}

t.test('Caddy forward_auth in front of /api/auth/check', { skip: !hasCaddy && `no caddy binary at ${caddyBinary} (CI installs Debian's caddy)` }, async (t) => {
  const gateway = await startGateway(t)
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
    // One value, not "B, victim": the client's header never reaches the upstream.
    t.equal(saw['x-auth-user-id'], String(b.user.id))
    t.equal(saw['x-auth-email'], b.user.email)
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
})
