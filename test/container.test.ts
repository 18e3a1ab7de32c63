import { execFile } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { parse } from 'yaml'
import { freshDatabase } from './helper.ts'
import { startServer } from './server-process.ts'

// Static checks of the image and compose file, and what they would run, run as they say it
// against the local PostgreSQL. test/container/run.sh (called by .ci/run) runs them on a real
// Docker engine.

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
  // As compose resolves the file with only SECRET_KEY set: ${VAR:-default} gives the default.
  const given: Record<string, string> = { SECRET_KEY: 'a-container-test-secret-of-at-least-32-characters' }
  const resolved = Object.fromEntries(Object.entries(composeEnv).map(([k, v]) => [k, String(v)
    .replace(/\$\{([A-Z_]+):\?[^}]*\}/g, (_, name: string) => {
      if (given[name] === undefined) throw new Error(`the compose file requires ${name}`)
      return given[name]
    })
    .replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1')]))
  const env: Record<string, string> = {
    PATH: process.env.PATH!,
    ...dockerfileEnv(),
    ...resolved,
    DATABASE_URL: database.DATABASE_URL!,
    HOST: '127.0.0.1',
    PORT: '0',
    SHUTDOWN_DRAIN_DELAY: '0'
  }
  t.equal(env.NODE_ENV, 'production')
  t.equal(env.DB_ENGINE, undefined, 'DATABASE_URL means PostgreSQL')
  t.equal(env.PUBLIC_URL, 'http://localhost:3000', 'the URL it is published at, required in production')
  t.equal(env.SECRET_KEY, given.SECRET_KEY)

  const [command, ...args] = jsonCommand('CMD')
  // The image starts the service as `npm start` does.
  const { scripts } = JSON.parse(await readFile('package.json', 'utf8'))
  t.same([command, ...args], scripts.start.split(' '))
  const server = startServer(env, args)
  t.teardown(() => { server.child.kill('SIGKILL') })
  const url = await server.listening
  t.match(server.output(), /database migrated/)

  const [, ...check] = jsonCommand('HEALTHCHECK')
  const port = new URL(url).port
  await t.resolves(promisify(execFile)(process.execPath, check, { env: { PATH: env.PATH!, PORT: port } }), 'HEALTHCHECK exits 0')
  t.equal(await server.stop(), 0)
})

t.test('the HEALTHCHECK asks liveness: a database outage must not mark every replica unhealthy', async (t) => {
  const [, , script] = jsonCommand('HEALTHCHECK')
  t.match(script, /'\/health\/live'/)
  t.notMatch(script, /ready/)
})

t.test('the compose file wires authgate to a healthy PostgreSQL', async (t) => {
  const { authgate, postgres } = compose.services
  t.same(authgate.depends_on, { postgres: { condition: 'service_healthy' } })
  // Over TCP: while the image creates the database, its server listens on the unix socket only.
  t.match(postgres.healthcheck.test.join(' '), /pg_isready -h 127\.0\.0\.1 /)
  t.equal(postgres.restart, 'unless-stopped')
  t.equal(authgate.restart, 'unless-stopped')
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

t.test('the compose file requires SECRET_KEY, publishes on 127.0.0.1, and waits out the drain', async (t) => {
  const { authgate } = compose.services
  // No public fallback secret: compose refuses to start without one.
  t.match(authgate.environment.SECRET_KEY, /^\$\{SECRET_KEY:\?[^}]+\}$/)
  t.ok(authgate.ports.length > 0)
  for (const port of authgate.ports as string[]) {
    const resolved = port.replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1')
    t.match(resolved, /^127\.0\.0\.1:\d+:3000$/, `${port} binds 127.0.0.1 by default`)
  }
  for (const [name, service] of Object.entries(compose.services as Record<string, { ports?: string[] }>)) {
    if (name !== 'authgate') t.equal(service.ports, undefined, `${name} publishes no port`)
  }
  // SHUTDOWN_DRAIN_DELAY (5s by default) and the requests in flight, before compose kills it.
  t.match(authgate.stop_grace_period, /^\d+s$/)
  t.ok(Number.parseInt(authgate.stop_grace_period) >= 20, `stop_grace_period ${authgate.stop_grace_period}`)
})

t.test('the Dockerfile builds offline and leaves no anonymous volume', async (t) => {
  t.notMatch(dockerfile, /^# *syntax *=/m, 'no frontend image to pull')
  t.notMatch(dockerfile, /^VOLUME/m, 'no VOLUME')
})

/** A .dockerignore pattern as Docker reads it (Go's filepath.Match plus `**`): `*` matches dotfiles too. */
function dockerGlob (pattern: string): RegExp {
  const source = pattern.split(/(\*\*\/|\*\*|\*|\?)/).map((part) => {
    switch (part) {
      case '**/': return '(?:.*/)?'
      case '**': return '.*'
      case '*': return '[^/]*'
      case '?': return '[^/]'
      default: return part.replace(/[.+^${}()|[\]\\]/g, '\\$&')
    }
  }).join('')
  return new RegExp(`^${source}$`)
}

/** Whether .dockerignore keeps `path` out of the build context: the last matching pattern wins. */
function ignoredBy (patterns: string[], path: string): boolean {
  const parts = path.split('/')
  // A pattern that matches a folder matches all it holds.
  const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'))
  let ignored = false
  for (const pattern of patterns) {
    const negated = pattern.startsWith('!')
    const glob = (negated ? pattern.slice(1) : pattern).replace(/\/$/, '')
    if (candidates.some((candidate) => dockerGlob(glob).test(candidate))) ignored = !negated
  }
  return ignored
}

t.test('the image runs as a non-root user; the build context is an allow-list', async (t) => {
  t.match(dockerfile, /^USER node$/m)
  const patterns = (await readFile('.dockerignore', 'utf8')).split('\n').map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
  t.equal(patterns[0], '*', 'everything is left out unless allowed')
  const copied = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1]!.split(' '))
  t.ok(copied.length >= 7, `${copied.length} paths copied`)
  for (const path of copied) t.notOk(ignoredBy(patterns, path), `${path} is in the build context`)
  for (const path of ['src/start.js', 'src/server.ts', 'plugins/db.ts', 'routes/health.ts', 'migrations/index.ts']) {
    t.notOk(ignoredBy(patterns, path), `${path} is in the build context`)
  }
  for (const path of ['data', 'data/secret_key', '.env', '.env.local', 'node_modules/fastify/package.json',
    'src/node_modules/x.js', 'plugins/data/base', 'routes/.env', 'test/helper.ts', '.git/HEAD', 'coverage/index.html', 'bench/run.ts', 'Dockerfile']) {
    t.ok(ignoredBy(patterns, path), `${path} is left out`)
  }
})
