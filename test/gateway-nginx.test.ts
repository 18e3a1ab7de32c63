import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer as createHttpServer, type IncomingHttpHeaders } from 'node:http'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { build, claimsOf, login } from './helper.ts'

const HOST = '127.0.0.1'
const WAIT_MS = 10_000

// Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
const nginxBinary = ['nginx', '/usr/sbin/nginx'].find((bin) => spawnSync(bin, ['-v']).status === 0)

/** The nginx config of the README's example: /api/ to authgate, everything else behind auth_request. */
function nginxConfig (dir: string, port: number, authgate: number, upstream: number): string {
  const identity = [['user_id', 'User-Id'], ['username', 'Username'], ['email', 'Email'], ['session_id', 'Session-Id']]
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
    listen ${HOST}:${port};
    location /api/ {
      proxy_pass http://${HOST}:${authgate};
    }
    location / {
      auth_request /_auth;
${identity.map(([v, h]) => `      auth_request_set $auth_${v} $upstream_http_x_auth_${v};
      proxy_set_header X-Auth-${h} $auth_${v};`).join('\n')}
      proxy_pass http://${HOST}:${upstream};
    }
    location = /_auth {
      internal;
      proxy_pass http://${HOST}:${authgate}/api/auth/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Authorization $http_authorization;
      proxy_set_header Cookie $http_cookie;
    }
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

/** authgate, an upstream echoing the headers it received, and nginx in front of both; all stopped at teardown. */
async function startGateway (t: Test): Promise<Gateway & { app: Awaited<ReturnType<typeof build>> }> {
  // Teardowns run last-registered first: nginx stops before its folder goes.
  const dir = await mkdtemp(join(tmpdir(), 'authgate-nginx-'))
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
  const conf = join(dir, 'nginx.conf')
  const errorLog = join(dir, 'error.log')
  await writeFile(conf, nginxConfig(dir, port, authgate, (upstream.address() as AddressInfo).port))
  const nginx = spawn(nginxBinary as string, ['-p', dir, '-c', conf, '-e', errorLog], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  nginx.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  // Fast shutdown: the master stops its worker, then exits.
  t.teardown(() => stop(nginx, 'SIGTERM'))

  const deadline = Date.now() + WAIT_MS
  while (!await answers(port)) {
    if (nginx.exitCode !== null || Date.now() > deadline) {
      const log = await readFile(errorLog, 'utf8').catch(() => '')
      throw new Error(`nginx did not answer on ${HOST}:${port} within ${WAIT_MS} ms: ${stderr}${log}`)
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

t.test('nginx auth_request in front of /api/auth/check', { skip: nginxBinary === undefined && 'no nginx binary on this machine (CI installs Debian\'s nginx)' }, async (t) => {
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
    // One value, not "B, victim": nginx replaced the client's header instead of adding to it.
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
