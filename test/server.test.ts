import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:net'
import t from 'tap'
import { freshDatabase, SECRET_KEY } from './helper.ts'

async function freePort (): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  return port
}

function start (env: Record<string, string>) {
  const child = spawn(process.execPath, ['src/server.ts'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (chunk) => { output += chunk })
  child.stderr.on('data', (chunk) => { output += chunk })
  return { child, output: () => output }
}

t.test('npm start serves on HOST:PORT and shuts down gracefully on SIGTERM', async (t) => {
  const port = await freePort()
  const database = await freshDatabase(t)
  const { child, output } = start({ ...database, SECRET_KEY, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'info' })
  t.teardown(() => { child.kill('SIGKILL') })
  for (let i = 0; i < 600 && !output().includes('Server listening'); i++) await new Promise((resolve) => setTimeout(resolve, 50))
  const res = await fetch(`http://127.0.0.1:${port}/health/ready`)
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-request-id'), null)
  const logs = output().split('\n').filter(Boolean).map((line) => JSON.parse(line))
  t.ok(logs.every((l) => typeof l.level === 'number'), 'structured JSON logs')
  child.kill('SIGTERM')
  const [code] = await once(child, 'exit')
  t.equal(code, 0)
  t.match(output(), /"signal":"SIGTERM"/)
})

t.test('a bad variable stops the start, naming it', async (t) => {
  const { child, output } = start({ PORT: 'eighty' })
  const [code] = await once(child, 'exit')
  t.equal(code, 1)
  t.match(output(), /invalid configuration: .*PORT/)
})
