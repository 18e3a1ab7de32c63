import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { JwkSchema, problems } from '#src/schemas.ts'

// Mounted at /.well-known (a folder cannot start with a dot and stay visible to autoload).
export const prefixOverride = '/.well-known'

const jwks: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, keyring } = fastify
  if (config.JWT_ALGORITHM === 'HS256') {
    fastify.log.warn('JWT_ALGORITHM=HS256: the JWKS publishes no key, so other services cannot verify tokens; use ES256, EdDSA or RS256 for them')
  }

  fastify.get('/jwks.json', {
    schema: {
      tags: ['token'],
      summary: 'Public keys to verify access tokens with (RFC 7517)',
      description: 'Cache-Control and ETag are set; If-None-Match with the current ETag answers 304.',
      produces: ['application/jwk-set+json'],
      response: { 200: Type.Object({ keys: Type.Array(JwkSchema) }), 304: Type.Null({ description: 'Not modified: the cached JWKS is current' }), ...problems() }
    }
  }, async (request, reply) => {
    // Short enough (JWKS_MAX_AGE) that a rotation reaches verifiers well before the old key retires.
    reply.header('cache-control', `public, max-age=${config.jwksMaxAgeS}`).header('etag', keyring.jwksEtag)
    // RFC 9110 §13.1.2: a cache that holds this version gets 304 and no body.
    const match = request.headers['if-none-match']
    if (match !== undefined && (match.trim() === '*' || match.split(',').some((tag) => tag.trim().replace(/^W\//, '') === keyring.jwksEtag))) {
      return reply.code(304).send(null)
    }
    // RFC 7517 §8.5.1.
    return reply.type('application/jwk-set+json').send(keyring.jwks)
  })
}

export default jwks
