import { once } from 'node:events'
import t from 'tap'
import { freshDatabase, SECRET_KEY } from './helper.ts'
import { startServer } from './server-process.ts'

t.test('npm start serves on HOST:PORT and shuts down gracefully on SIGTERM', async (t) => {
  const database = await freshDatabase(t)
  const server = startServer({ ...process.env, ...database, SECRET_KEY, HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'info' })
  t.teardown(() => { server.child.kill('SIGKILL') })
  const res = await fetch(`${await server.listening}/health/ready`)
  t.equal(res.status, 200)
  const logs = server.output().split('\n').filter(Boolean).map((line) => JSON.parse(line))
  t.ok(logs.every((l) => typeof l.level === 'number'), 'structured JSON logs')
  t.equal(await server.stop(), 0)
  t.match(server.output(), /"signal":"SIGTERM"/)
})

t.test('a bad variable stops the start, naming it', async (t) => {
  const server = startServer({ ...process.env, PORT: 'eighty' })
  const [code] = await once(server.child, 'exit')
  t.equal(code, 1)
  t.equal(server.output(), 'authgate: invalid configuration: PORT must be a whole number, not "eighty"\n')
})

t.test('a start that fails later says why in one line', async (t) => {
  const { SECRET_KEY: _, ...env } = process.env as Record<string, string>
  const noSecret = startServer({ ...env, NODE_ENV: 'production', DB_NAME: 'memory://', DB_ENGINE: 'pglite' })
  t.equal((await once(noSecret.child, 'exit'))[0], 1)
  t.equal(noSecret.output(), 'authgate: invalid configuration: SECRET_KEY is required when NODE_ENV=production\n', 'one line')

  // Port 1 on the loopback: nothing listens there.
  const noDatabase = startServer({ ...env, SECRET_KEY, DB_ENGINE: 'postgres', DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none' })
  t.equal((await once(noDatabase.child, 'exit'))[0], 1)
  t.equal(noDatabase.output(), 'authgate: could not start: database migration failed: connect ECONNREFUSED 127.0.0.1:1\n', 'one line, the cause once')
})
