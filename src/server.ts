import closeWithGrace from 'close-with-grace'
import envSchema from 'env-schema'
import Fastify from 'fastify'
import app, { serverOptions } from './app.ts'
import { ConfigSchema, type Config } from './config.ts'

let config: Config
try {
  config = envSchema({ schema: ConfigSchema, dotenv: true })
} catch (error) {
  console.error(`authgate: invalid configuration: ${(error as Error).message}`)
  process.exit(1)
}

const fastify = Fastify(serverOptions(config))
try {
  await fastify.register(app, { env: config })
  await fastify.ready()
} catch (error) {
  fastify.log.fatal({ err: error }, 'could not start')
  console.error(`authgate: could not start: ${(error as Error).message}`)
  process.exit(1)
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
  fastify.log.fatal({ err: error }, 'could not listen')
  console.error(`authgate: could not listen on ${config.HOST}:${config.PORT}: ${(error as Error).message}`)
  process.exit(1)
}
