// Issue 26, item 15: on PGlite a CLI command runs beside the service on the same data folder.
// The service takes it over a Unix socket in the folder and runs it on its own connection.
import { execFile, spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { createConnection } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { migrations } from '../migrations/index.ts'
import { runCli } from '../src/cli.ts'
import { COMMAND_SOCKET, sendCommand } from '../src/lib/command-socket.ts'
import { lockFolder } from '../src/lib/folder-lock.ts'
import { freshDatabase, SECRET_KEY, serverEnv, uniqueUser } from './helper.ts'
import { startServer, type ServerProcess } from './server-process.ts'

const skip = process.env.DB_ENGINE === 'postgres' && 'on PostgreSQL every command has a connection of its own'
const run = promisify(execFile)
const CLI = join(import.meta.dirname, '..', 'src', 'cli.ts')
const MIGRATIONS = Object.keys(migrations)

/** `node src/cli.ts …` as npm runs it, in its own process: code, stdout, stderr. */
async function cli (args: string[], env: Record<string, string>, cwd?: string): Promise<{ code: number, stdout: string, stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { env, cwd })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const { code, stdout, stderr } = error as { code: number, stdout: string, stderr: string }
    return { code, stdout, stderr }
  }
}

const post = async (url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> =>
  await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })

async function clientToken (url: string, id: string, secret: string): Promise<Response> {
  return await fetch(`${url}/oauth/token`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials'
  })
}

const kidOf = (jwt: string): string => (JSON.parse(Buffer.from(jwt.split('.')[0]!, 'base64url').toString()) as { kid: string }).kid
const jwksKids = async (url: string): Promise<string[]> => ((await (await fetch(`${url}/.well-known/jwks.json`)).json()) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid)

/** A service on `database`, stopped (killed if need be) at the end of `t`. */
async function serve (t: Test, database: Record<string, string>): Promise<{ server: ServerProcess, url: string }> {
  const server = startServer(serverEnv(database))
  t.teardown(() => { server.child.kill('SIGKILL') })
  return { server, url: await server.listening }
}

/** Whether the uid `uid` can connect to the Unix socket `path`: perl (perl-base, in every Debian) runs as that user. */
async function connectsAs (uid: number, path: string): Promise<{ ok: boolean, why: string }> {
  const child = spawn('/usr/bin/perl', ['-MIO::Socket::UNIX', '-e', 'IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "$!\\n"', path], { uid, gid: uid, cwd: '/', stdio: ['ignore', 'ignore', 'pipe'] })
  let why = ''
  child.stderr.on('data', (chunk: Buffer) => { why += chunk })
  const [code] = await once(child, 'exit') as [number]
  return { ok: code === 0, why: why.trim() }
}
const canSwitchUser = process.getuid?.() === 0 && existsSync('/usr/bin/perl')

t.test('beside a running service on its folder, a CLI command runs in that service and its effect is visible there at once', { skip }, async (t) => {
  const database = await freshDatabase(t)
  const env = serverEnv(database)
  const { server, url } = await serve(t, database)
  const user = uniqueUser()
  t.equal((await post(`${url}/api/auth/register`, user)).status, 201)

  t.test('clients create --json: the running server gives the new client a token', async (t) => {
    const created = await cli(['clients', 'create', '--name', 'beside', '--audience', 'https://orders.example.com', '--scope', 'orders:read', '--json'], env)
    t.match(created, { code: 0, stderr: '' })
    const { client_id: id, client_secret: secret } = JSON.parse(created.stdout) as { client_id: string, client_secret: string }
    const res = await clientToken(url, id, secret)
    t.equal(res.status, 200)
    t.match(await res.json(), { token_type: 'Bearer', access_token: String })
    t.match(server.output(), /"command":"clients","code":0,"msg":"ran a command of the CLI"/, 'the service ran it')
  })

  t.test('keys:rotate --next and keys:rotate: the JWKS and the signer change at once', async (t) => {
    const published = await cli(['keys:rotate', '--next'], env)
    const next = /^published ([0-9a-f-]{36}) \(ES256\) in the JWKS; it signs after the next keys:rotate\n$/.exec(published.stdout)?.[1]
    t.ok(next, published.stdout + published.stderr)
    t.ok((await jwksKids(url)).includes(next!), 'published in the running service\'s JWKS')
    const rotated = await cli(['keys:rotate'], env)
    t.match(rotated, { code: 0, stdout: `signing with ${next} (ES256), the key published before; the previous keys verify until their tokens expire\n` })
    const login = await post(`${url}/api/auth/login`, { identifier: user.username, password: user.password })
    t.equal(login.status, 200)
    t.equal(kidOf(((await login.json()) as { access: string }).access), next, 'its next token is signed with the new key')
  })

  t.test('tokens:flush runs in the service', async (t) => {
    t.match(await cli(['tokens:flush'], env), { code: 0, stdout: /^deleted \d+ sessions, \d+ refresh tokens, \d+ spent client assertions and \d+ spent or expired one-time secrets\n$/, stderr: '' })
    t.match(server.output(), /"command":"tokens:flush","code":0/)
  })

  t.test('migrate says the database is up to date: the service migrated it at its start', async (t) => {
    t.match(await cli(['migrate'], env), { code: 0, stdout: 'database is up to date\n' })
  })

  t.test('a file the command line names is read where the CLI runs, not where the service does', async (t) => {
    const cwd = await mkdtemp(join(tmpdir(), 'authgate-cwd-'))
    t.teardown(() => rm(cwd, { recursive: true, force: true }))
    const jwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' })
    await writeFile(join(cwd, 'keys.json'), JSON.stringify({ keys: [{ ...jwk, kid: 'k1', alg: 'ES256' }] }))
    const created = await cli(['clients', 'create', '--name', 'signed', '--audience', 'https://orders.example.com', '--jwks', 'keys.json'], env, cwd)
    t.match(created, { code: 0, stdout: /authentication: private_key_jwt with 1 key\(s\), no secret/ })
  })

  t.test('migrate:down is refused, saying why and what to do; the service serves on', async (t) => {
    t.same(await cli(['migrate:down'], env), {
      code: 1,
      stdout: '',
      stderr: `authgate: migrate:down does not run beside the service running on this data folder (process ${server.child.pid}): it would take away the schema that service's code works on; stop the service first\n`
    })
    t.equal((await post(`${url}/api/auth/login`, { identifier: user.username, password: user.password })).status, 200)
  })

  t.test('20 commands at once, among 20 sign-ins: each runs once, each client gets its token', async (t) => {
    const [commands, logins] = await Promise.all([
      Promise.all(Array.from({ length: 20 }, (_, i) => runCli(['clients', 'create', '--name', `many-${i}`, '--audience', 'https://orders.example.com', '--json'], env))),
      Promise.all(Array.from({ length: 20 }, () => post(`${url}/api/auth/login`, { identifier: user.username, password: user.password })))
    ])
    t.same(logins.map((res) => res.status), Array(20).fill(200))
    t.same(commands.map(({ code, stderr }) => ({ code, stderr })), Array(20).fill({ code: 0, stderr: '' }))
    const made = commands.map(({ stdout }) => JSON.parse(stdout) as { client_id: string, client_secret: string })
    t.equal(new Set(made.map((c) => c.client_id)).size, 20)
    const tokens = await Promise.all(made.map((c) => clientToken(url, c.client_id, c.client_secret)))
    t.same(tokens.map((res) => res.status), Array(20).fill(200))
    const list = await runCli(['clients', 'list', '--json'], env)
    t.equal((JSON.parse(list.stdout) as unknown[]).length, 22, 'and no other')
  })

  t.test('a CLI of another version is refused: the service would run its own code', async (t) => {
    const answer = await sendCommand(join(database.DB_NAME!, COMMAND_SOCKET), { args: ['tokens:flush'], cwd: process.cwd(), migrations: [...MIGRATIONS, '9999_from_the_future'] })
    t.same(answer, {
      code: 1,
      stdout: '',
      stderr: `authgate: the service running on this data folder (process ${server.child.pid}) is another version of authgate than this command (their migrations differ): run the command of the service's version, or restart the service on this one`
    })
  })

  t.test('a request the service cannot read gets an answer saying so', async (t) => {
    const socket = createConnection(join(database.DB_NAME!, COMMAND_SOCKET))
    socket.end('{"args": "not a command line"}')
    let answer = ''
    socket.on('data', (chunk: Buffer) => { answer += chunk })
    await once(socket, 'close')
    t.same(JSON.parse(answer), { code: 2, stdout: '', stderr: 'authgate: the service could not read the command (a CLI of another version?)' })
  })

  t.test('the socket is the owner\'s alone (0600), in a folder of the owner\'s alone (0700)', async (t) => {
    const socket = await stat(join(database.DB_NAME!, COMMAND_SOCKET))
    t.ok(socket.isSocket())
    t.equal(socket.mode & 0o777, 0o600)
    t.equal((await stat(database.DB_NAME!)).mode & 0o777, 0o700)
  })

  t.test('another local user cannot reach the socket', { skip: !canSwitchUser && 'needs root and /usr/bin/perl to connect as another user' }, async (t) => {
    const path = join(database.DB_NAME!, COMMAND_SOCKET)
    t.same(await connectsAs(process.getuid!(), path), { ok: true, why: '' }, 'the owner connects (the probe works)')
    t.same(await connectsAs(65534, path), { ok: false, why: 'Permission denied' }, 'nobody cannot even reach it')
    // The folder opened to others' traversal: the socket's own mode still refuses them.
    await chmod(database.DB_NAME!, 0o711)
    t.teardown(() => chmod(database.DB_NAME!, 0o700))
    t.same(await connectsAs(65534, path), { ok: false, why: 'Permission denied' }, 'nor connect to it when the folder lets them through')
  })

  t.test('once the service stops, the socket is gone and the CLI runs the command itself', async (t) => {
    t.equal(await server.stop(), 0)
    t.notOk(existsSync(join(database.DB_NAME!, COMMAND_SOCKET)))
    t.match(await cli(['clients', 'list'], env), { code: 0, stdout: /"beside"/ })
  })
})

t.test('the socket a killed service left behind does not confuse the CLI; the next start takes its place', { skip }, async (t) => {
  const database = await freshDatabase(t)
  const env = { ...database, SECRET_KEY }
  const { server } = await serve(t, database)
  server.child.kill('SIGKILL')
  await once(server.child, 'exit')
  t.ok(existsSync(join(database.DB_NAME!, COMMAND_SOCKET)), 'left behind')
  // Nobody listens: the CLI opens the folder itself, taking over the dead service's lock.
  t.match(await runCli(['keys:rotate'], env), { code: 0, stdout: /^signing with [0-9a-f-]{36} \(ES256\);/ })
  const { server: next, url } = await serve(t, database)
  const rotated = await runCli(['keys:rotate'], env)
  const kid = /^signing with ([0-9a-f-]{36})/.exec(rotated.stdout)?.[1]
  t.ok((await jwksKids(url)).includes(kid!), 'handed to the new service')
  t.match(next.output(), /"command":"keys:rotate","code":0/)
  t.equal(await next.stop(), 0)
})

t.test('a folder held by a process that takes no commands (a service starting, another command): the CLI says so', { skip }, async (t) => {
  const database = await freshDatabase(t)
  const held = await lockFolder(database.DB_NAME!)
  t.teardown(() => held.release())
  const result = await runCli(['tokens:flush'], { ...database, SECRET_KEY })
  t.match(result, { code: 1, stdout: '' })
  t.match(result.stderr, new RegExp(`^authgate: the data folder ${database.DB_NAME} is in use by process ${process.pid} \\([^)]+, since [0-9T:.-]+Z\\), which does not take commands now \\(a service starting or stopping, or another command\\): try again in a moment, or stop it first$`))
})
