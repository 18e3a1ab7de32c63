import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import app, { serverOptions } from './app.ts'
import { loadConfig, processEnv, type Config } from './config.ts'

// A failed start is one line on stderr, naming what to fix; the stack goes to the debug log.
function fail (what: string, error: unknown): never {
  console.error(`authgate: ${what}: ${(error as Error).message}`)
  process.exit(1)
}

let config: Config
try {
  config = await loadConfig(processEnv(), (message) => console.warn(`authgate: ${message}`))
} catch (error) {
  fail('invalid configuration', error)
}

const fastify = Fastify(serverOptions(config))
try {
  await fastify.register(app, { config })
  await fastify.ready()
} catch (error) {
  fastify.log.debug({ err: error }, 'could not start')
  fail('could not start', error)
}

// SIGTERM/SIGINT: stop accepting, let in-flight requests finish, close the pool; then exit.
closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err !== undefined) fastify.log.error({ err }, 'closing after an error')
  else fastify.log.info({ signal }, 'closing')
  await fastify.close()
})

try {
  await fastify.listen({ host: config.HOST, port: config.PORT })
} catch (error) {
  fastify.log.debug({ err: error }, 'could not listen')
  fail(`could not listen on ${config.HOST}:${config.PORT}`, error)
}
