import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { LOG_LEVELS } from '#src/config.ts'
import { ping } from '#src/db/index.ts'
import { ShuttingDownError } from '#src/errors.ts'
import { problems } from '#src/schemas.ts'

// Readiness answers within a second, even while database connections hang.
const READY_PING_TIMEOUT_MS = 500

const StatusSchema = Type.Object({ status: Type.Literal('ok') })

const health: FastifyPluginAsyncTypebox = async (fastify) => {
  // Probes come every few seconds: they stay out of the logs unless something fails, and
  // never log more than LOG_LEVEL allows.
  const { logLevel } = fastify.config
  const quiet = LOG_LEVELS.indexOf(logLevel) < LOG_LEVELS.indexOf('warn') || logLevel === 'silent' ? logLevel : 'warn'

  fastify.get('/health/live', {
    logLevel: quiet,
    schema: { tags: ['health'], summary: 'The process is up', response: { 200: StatusSchema, ...problems() } }
  }, async () => ({ status: 'ok' as const }))

  fastify.get('/health/ready', {
    logLevel: quiet,
    schema: {
      tags: ['health'],
      summary: 'The database answers',
      description: 'Answers 503 while the database is unreachable, and while the server drains before it closes.',
      response: { 200: StatusSchema, ...problems(503) }
    }
  }, async () => {
    // The gateway stops routing here during the drain, while requests are still served.
    if (fastify.draining) throw new ShuttingDownError()
    await ping(fastify.db, READY_PING_TIMEOUT_MS)
    return { status: 'ok' as const }
  })
}

export default health
