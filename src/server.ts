import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import { flushCompileCache } from 'node:module'
import { setTimeout as sleep } from 'node:timers/promises'
import { IDLE_LINGER_MS } from '../plugins/lifecycle.ts'
import app, { serverOptions } from './app.ts'
import { serveCommands } from './cli.ts'
import { loadConfig, processEnv, type Config } from './config.ts'
import { DatabaseUnavailableError } from './errors.ts'
import { lowerWorkerPriority } from './lib/worker-priority.ts'

// The server: src/start.js runs it with Node's compile cache on (npm start, the image).

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
  // The compile cache (src/start.js), written now, not only at exit: a process that is killed
  // still leaves it for the next start. Nothing happens when it is off.
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
