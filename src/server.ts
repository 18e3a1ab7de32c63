import { lstatSync, mkdirSync } from 'node:fs'
import { enableCompileCache, flushCompileCache } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Config } from './config.ts'

/**
 * Node's compile cache (https://nodejs.org/api/module.html#module-compile-cache): the code of
 * every module, and the JavaScript stripped from each TypeScript file, kept from one start to
 * the next; a start then neither compiles nor strips them again (about a third of the start).
 * This file itself is stripped before the cache is on, unless NODE_COMPILE_CACHE is set in the
 * environment Node starts with: only then is the type stripper (about 17 MB of RSS) never
 * loaded. NODE_COMPILE_CACHE names the folder, NODE_DISABLE_COMPILE_CACHE=1
 * turns it off. Otherwise a folder in the temporary directory that only this user can write:
 * whoever can write the cache chooses the code that runs, so a folder another user made or
 * can write is not used, and the service starts without the cache.
 */
function compileCacheDir (): string | undefined {
  if (process.env.NODE_COMPILE_CACHE !== undefined) return process.env.NODE_COMPILE_CACHE
  const uid = process.getuid?.()
  if (uid === undefined) return join(tmpdir(), 'authgate-compile-cache')
  const dir = join(tmpdir(), `authgate-compile-cache-${uid}`)
  try {
    mkdirSync(dir, { mode: 0o700 })
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') return undefined
  }
  try {
    const stat = lstatSync(dir)
    return stat.isDirectory() && stat.uid === uid && (stat.mode & 0o022) === 0 ? dir : undefined
  } catch {
    return undefined
  }
}
const cacheDir = compileCacheDir()
if (cacheDir !== undefined) enableCompileCache(cacheDir)

// Imported once the cache is on, so that they are read from it.
const { default: closeWithGrace } = await import('close-with-grace')
const { default: Fastify } = await import('fastify')
const { default: fp } = await import('fastify-plugin')
const { IDLE_LINGER_MS } = await import('../plugins/lifecycle.ts')
const { default: app, serverOptions } = await import('./app.ts')
const { loadConfig, processEnv } = await import('./config.ts')
const { lowerWorkerPriority } = await import('./lib/worker-priority.ts')
const { DatabaseUnavailableError } = await import('./errors.ts')
const { serveCommands } = await import('./cli.ts')

// A failed start is one line on stderr, naming what to fix; the stack goes to the debug log.
// A database that cannot answer says why: its driver's error is the cause.
function fail (what: string, error: unknown): never {
  const { message, cause } = error as Error
  const why = error instanceof DatabaseUnavailableError && cause instanceof Error ? `: ${cause.message}` : ''
  console.error(`authgate: ${what}: ${message}${why}`)
  process.exit(1)
}

let config: Config
try {
  config = await loadConfig(processEnv(), (message) => console.warn(`authgate: ${message}`))
} catch (error) {
  fail('invalid configuration', error)
}

const options = serverOptions(config)
const fastify = Fastify(options)
try {
  // fp: the app's decorators (drain) on this instance, as in the tests' build().
  await fastify.register(fp(app), { config })
  await fastify.ready()
  // Written now, not only at exit: a process that is killed still leaves it for the next start.
  flushCompileCache()
} catch (error) {
  fastify.log.debug({ err: error }, 'could not start')
  fail('could not start', error)
}
// Requests before bcrypt: a login flood uses what the requests leave of the cores.
await lowerWorkerPriority()
// On a PGlite folder, the CLI's commands run here (the folder is this process's alone): taken
// before the port opens, so a command sent once the service listens finds the socket.
const commands = await serveCommands({ config, db: fastify.db, log: fastify.log, keyring: fastify.keyring })

// SIGTERM (an orchestrator): drain first, /health/ready answering 503 for SHUTDOWN_DRAIN_DELAY
// while requests are still served, so the gateway stops routing here; then close: stop
// accepting, finish in-flight requests (each within handlerTimeout), close the pool, exit 0.
// SIGINT (a terminal) closes at once. The whole fits in the delay; past it, exit 1. A container's
// stop grace must be longer than this delay.
const drainMs = config.drainDelayS * 1000
const closeMs = (options.handlerTimeout ?? 0) + IDLE_LINGER_MS + 1000
closeWithGrace({ delay: drainMs + closeMs }, async ({ signal, err }) => {
  if (err !== undefined) fastify.log.error({ err }, 'closing after an error')
  if (signal === 'SIGTERM' && drainMs > 0) {
    fastify.drain()
    fastify.log.info({ signal, drainDelayS: config.drainDelayS }, 'draining: /health/ready answers 503, requests are still served')
    await sleep(drainMs)
  }
  fastify.log.info({ signal }, 'closing: no new connections, finishing the requests in flight')
  // The commands running finish on the database before it closes; new ones find no socket.
  await commands?.close()
  await fastify.close()
  fastify.log.info('closed')
})

try {
  await fastify.listen({ host: config.HOST, port: config.PORT })
} catch (error) {
  fastify.log.debug({ err: error }, 'could not listen')
  fail(`could not listen on ${config.HOST}:${config.PORT}`, error)
}
