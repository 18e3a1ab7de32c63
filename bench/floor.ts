// The floor of the benchmark: a bare Fastify route that answers /api/detail's body through
// /api/detail's response schema, in its own process (it must not share the bench's event
// loop). No plugins, no hooks, no authentication: what the framework alone costs here.
//
//   FLOOR_BODY='{"message":"Welcome to Page","user":{...}}' node bench/floor.ts
// prints `listening <port>` on stdout once it listens on 127.0.0.1.
import { Type } from '@sinclair/typebox'
import Fastify from 'fastify'
import { problems, UserSchema } from '#src/schemas.ts'

const body = JSON.parse(process.env.FLOOR_BODY ?? '{}') as unknown
const fastify = Fastify({ logger: false })

// The same response schema as routes/api/detail.ts, so serialization costs the same.
fastify.get('/api/detail', {
  schema: {
    response: {
      200: Type.Object({ message: Type.String(), user: UserSchema }),
      ...problems(400, 401, 503)
    }
  }
}, async () => body)

await fastify.listen({ host: '127.0.0.1', port: 0 })
const address = fastify.server.address()
if (address === null || typeof address === 'string') throw new Error('the floor has no port')
console.log(`listening ${address.port}`)
process.once('SIGTERM', () => { fastify.close().then(() => process.exit(0), () => process.exit(1)) })
