import formbody from '@fastify/formbody'
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { normalizeIP } from '@fastify/rate-limit'
import { callerOf } from '#src/http/caller.ts'
import { clientCredentialsOf, logClientRefusal } from '#src/http/client-credentials.ts'
import { perIp, perKey } from '#src/http/limits.ts'
import { ClientParametersSchema, ClientSecurity, oauthProblems } from '#src/schemas.ts'
import type { ServiceClient } from '#src/services/oauth/clients.ts'

declare module 'fastify' {
  interface FastifyRequest {
    /** The client a request to the token endpoint authenticated as; null for the first-party (public) client. */
    oauthClient: ServiceClient | null
  }
}

// RFC 6749 §4.4.2 and §6, RFC 8707 §2 (resource), and `audience` as Auth0 and others name it.
// Unknown parameters are ignored (RFC 6749 §3.2); one given twice is invalid_request (§3.1).
export const TokenRequestSchema = Type.Object({
  grant_type: Type.String({ minLength: 1, maxLength: 128 }),
  scope: Type.Optional(Type.String({ maxLength: 4096 })),
  resource: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 512 }), Type.Array(Type.String({ minLength: 1, maxLength: 512 }), { maxItems: 20 })])),
  audience: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
  refresh_token: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
  ...ClientParametersSchema.properties
})

// RFC 6749 §5.1; a refresh_token only for the refresh grant.
const TokenResponseSchema = Type.Object({
  access_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer(),
  scope: Type.Optional(Type.String()),
  refresh_token: Type.Optional(Type.String())
})

/**
 * The OAuth 2.0 token endpoint (RFC 6749 §3.2): client credentials for services (§4.4), each
 * token one signature for one audience (RFC 8707), nothing written; and the refresh grant (§6),
 * the form twin of /api/token/refresh for users' sessions.
 */
const token: FastifyPluginAsyncTypebox = async (fastify) => {
  await fastify.register(formbody)
  const { auth, config } = fastify
  fastify.decorateRequest('oauthClient', null)

  fastify.post('/token', {
    // The client, authenticated before the per-client rate limit counts it: a client is counted
    // only once proven, so nobody else can spend its allowance; failures count per address.
    preHandler: async (request) => {
      request.oauthClient = await auth.grantClient(request.body.grant_type, clientCredentialsOf(request, request.body))
    },
    onError: logClientRefusal,
    config: {
      acceptsForm: true,
      oauth: true,
      limits: [
        perIp('token', config.RATE_LIMIT_TOKEN_MAX),
        perKey('client', config.RATE_LIMIT_CLIENT_MAX, async (request) => request.oauthClient?.id ?? `ip:${normalizeIP(request.ip)}`)
      ]
    },
    schema: {
      tags: ['oauth'],
      summary: 'OAuth 2.0 token endpoint: client_credentials for services, refresh_token for users',
      description: 'application/x-www-form-urlencoded as OAuth clients send it; JSON is taken too. Errors in RFC 6749 §5.2\'s shape.',
      security: ClientSecurity,
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: TokenRequestSchema,
      response: { 200: TokenResponseSchema, ...oauthProblems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    // RFC 6749 §5.1: no cache keeps a token (Cache-Control: no-store is every answer's).
    reply.header('pragma', 'no-cache')
    return await auth.grant(request.oauthClient, request.body, callerOf(request))
  })
}

export default token
