import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ServiceUnavailableError } from '../src/errors.ts'
import { problems } from '../src/schemas.ts'
import { pingDatabase } from '../src/services/health.ts'

const StatusSchema = Type.Object({ status: Type.Literal('ok') })

const health: FastifyPluginAsyncTypebox = async (fastify) => {
  // Probes come every few seconds: they stay out of the logs unless something fails.
  fastify.get('/health/live', {
    logLevel: 'warn',
    schema: { tags: ['health'], summary: 'The process is up', response: { 200: StatusSchema } }
  }, async () => ({ status: 'ok' as const }))

  fastify.get('/health/ready', {
    logLevel: 'warn',
    schema: { tags: ['health'], summary: 'The database answers', response: { 200: StatusSchema, ...problems(503) } }
  }, async (request) => {
    try {
      await pingDatabase(fastify.db)
    } catch (error) {
      request.log.warn({ err: error }, 'readiness check failed')
      throw new ServiceUnavailableError()
    }
    return { status: 'ok' as const }
  })
}

export default health
