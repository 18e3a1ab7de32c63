import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { JwkSchema } from '#src/schemas.ts'

// Mounted at /.well-known (a folder cannot start with a dot and stay visible to autoload).
export const prefixOverride = '/.well-known'

const jwks: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/jwks.json', {
    schema: {
      tags: ['token'],
      summary: 'Public keys to verify access tokens with (RFC 7517)',
      response: { 200: Type.Object({ keys: Type.Array(JwkSchema) }) }
    }
  }, async (_request, reply) => {
    // Short enough that a rotation reaches verifiers well before the old key is retired.
    reply.header('cache-control', 'public, max-age=300')
    return fastify.keyring.jwks
  })
}

export default jwks
