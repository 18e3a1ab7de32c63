import formbody from '@fastify/formbody'
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { clientCredentialsOf, logClientRefusal } from '#src/http/client-credentials.ts'
import { perIp } from '#src/http/limits.ts'
import { ClientParametersSchema, ClientSecurity, oauthProblems } from '#src/schemas.ts'

// RFC 7009 §2.1; unknown parameters are ignored, as at the token endpoint.
const RevokeRequestSchema = Type.Object({
  token: Type.String({ minLength: 1, maxLength: 8192 }),
  token_type_hint: Type.Optional(Type.String({ maxLength: 64 })),
  ...ClientParametersSchema.properties
})

/**
 * Token revocation (RFC 7009): a user's refresh or access token ends its session, as logout
 * does. Users' tokens are the first-party client's, a public client: no client authentication,
 * possession of the token suffices; a service client that authenticates may revoke only tokens
 * issued to it, and its own access tokens are one signature each, which nothing can revoke
 * (unsupported_token_type; disable the client to stop them all). A token that is not valid gets
 * the same 200 as one revoked (§2.2).
 */
const revoke: FastifyPluginAsyncTypebox = async (fastify) => {
  await fastify.register(formbody)
  const { auth, config } = fastify

  fastify.post('/revoke', {
    config: { acceptsForm: true, oauth: true, limits: [perIp('token', config.RATE_LIMIT_TOKEN_MAX)] },
    onError: logClientRefusal,
    schema: {
      tags: ['oauth'],
      summary: 'Token revocation (RFC 7009): a user\'s refresh or access token ends its session',
      security: ClientSecurity,
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: RevokeRequestSchema,
      // No content: RFC 7009 §2.2 says the client ignores it.
      response: { 200: { description: 'Revoked, or not a valid token: no content' }, ...oauthProblems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    await auth.revoke(await auth.authenticateClient(clientCredentialsOf(request, request.body), { publicClient: true }), request.body.token, callerOf(request))
    return reply.code(200).send()
  })
}

export default revoke
