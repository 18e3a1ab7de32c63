import { execFile } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { parse } from 'yaml'
import { freshDatabase } from './helper.ts'
import { startServer } from './server-process.ts'

// No Docker engine runs here: what the image and compose file would run is run as they say it,
// against the local PostgreSQL instead of the compose service.

const dockerfile = await readFile('Dockerfile', 'utf8')
const compose = parse(await readFile('docker-compose.yml', 'utf8'))

/** The JSON-form CMD of the final stage, or of its HEALTHCHECK. */
function jsonCommand (of: 'CMD' | 'HEALTHCHECK'): string[] {
  const pattern = of === 'CMD' ? /^CMD (\[.*\])$/gm : /^HEALTHCHECK .*\\\n\s*CMD (\[.*\])$/gm
  const match = [...dockerfile.matchAll(pattern)].at(-1)
  if (match === undefined) throw new Error(`no ${of} in the Dockerfile`)
  return JSON.parse(match[1]!)
}

function dockerfileEnv (): Record<string, string> {
  const block = /^ENV ((?:.*\\\n)*.*)$/m.exec(dockerfile)![1]!
  return Object.fromEntries([...block.matchAll(/([A-Z_]+)=(\S+)/g)].map((m) => [m[1]!, m[2]!]))
}

t.test('the image command with the compose environment serves, migrates, and passes its HEALTHCHECK', {
  skip: process.env.DB_ENGINE !== 'postgres' && 'compose runs PostgreSQL: checked in the PostgreSQL run'
}, async (t) => {
  const database = await freshDatabase(t)
  const composeEnv = compose.services.authgate.environment as Record<string, string>
  // ${VAR:-default} as compose resolves it with VAR unset.
  const resolved = Object.fromEntries(Object.entries(composeEnv).map(([k, v]) => [k, String(v).replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1')]))
  const env: Record<string, string> = {
    PATH: process.env.PATH!,
    ...dockerfileEnv(),
    ...resolved,
    DATABASE_URL: database.DATABASE_URL!,
    HOST: '127.0.0.1',
    PORT: '0'
  }
  t.equal(env.NODE_ENV, 'production')
  t.equal(env.DB_ENGINE, 'postgres')

  const [command, ...args] = jsonCommand('CMD')
  t.same([command, ...args], ['node', 'src/server.ts'])
  const server = startServer(env, args)
  t.teardown(() => { server.child.kill('SIGKILL') })
  const url = await server.listening
  t.match(server.output(), /database migrated/)

  const [, ...check] = jsonCommand('HEALTHCHECK')
  const port = new URL(url).port
  await t.resolves(promisify(execFile)(process.execPath, check, { env: { PATH: env.PATH!, PORT: port } }), 'HEALTHCHECK exits 0')
  t.equal(await server.stop(), 0)
})

t.test('the compose file wires authgate to a healthy PostgreSQL', async (t) => {
  const { authgate, postgres } = compose.services
  t.same(authgate.depends_on, { postgres: { condition: 'service_healthy' } })
  t.ok(postgres.healthcheck.test.join(' ').includes('pg_isready'))
  const url = new URL(authgate.environment.DATABASE_URL)
  t.equal(url.hostname, 'postgres')
  t.equal(url.username, postgres.environment.POSTGRES_USER)
  t.equal(url.password, postgres.environment.POSTGRES_PASSWORD)
  t.equal(url.pathname, `/${postgres.environment.POSTGRES_DB}`)
})

// The image holds the runtime folders and production dependencies only: whatever they import
// must be copied, and be a dependency, not a devDependency.
t.test('the image copies every runtime folder, and they import only production dependencies', async (t) => {
  const runtime = ['src', 'plugins', 'routes', 'migrations']
  const copied = [...dockerfile.matchAll(/^COPY (?!--from)(\S+) /gm)].map((m) => m[1])
  for (const folder of runtime) t.ok(copied.includes(folder), `COPY ${folder}`)
  const { dependencies } = JSON.parse(await readFile('package.json', 'utf8'))
  const files = (await Promise.all(runtime.map((folder) => readdir(folder, { recursive: true }))))
    .flatMap((names, i) => names.filter((n) => n.endsWith('.ts')).map((n) => `${runtime[i]}/${n}`))
  const imported = new Set<string>()
  for (const file of files) {
    for (const [, specifier] of (await readFile(file, 'utf8')).matchAll(/from '([^'.][^']*)'/g)) {
      // node: built-ins, and #src/ (package.json imports: the project's own files).
      if (specifier!.startsWith('node:') || specifier!.startsWith('#')) continue
      imported.add(specifier!.split('/').slice(0, specifier!.startsWith('@') ? 2 : 1).join('/'))
    }
  }
  t.ok(imported.size > 10, `${imported.size} packages imported`)
  for (const name of imported) t.ok(name in dependencies, `${name} is a production dependency`)
})

t.test('the image runs as a non-root user and ignores local state', async (t) => {
  t.match(dockerfile, /^USER node$/m)
  const ignored = (await readFile('.dockerignore', 'utf8')).split('\n')
  for (const path of ['node_modules', 'data', '.env']) t.ok(ignored.includes(path), path)
})
