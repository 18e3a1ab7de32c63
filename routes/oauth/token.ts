import formbody from '@fastify/formbody'
import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { normalizeIP } from '@fastify/rate-limit'
import { callerOf } from '#src/http/caller.ts'
import { clientCredentialsOf, logClientRefusal } from '#src/http/client-credentials.ts'
import { perIp, perKey } from '#src/http/limits.ts'
import { ClientParametersSchema, ClientSecurity, oauthProblems } from '#src/schemas.ts'
import { ACCESS_TOKEN_TYPE } from '#src/services/oauth/exchange.ts'
import { GRANTS, type GrantClient } from '#src/services/oauth/grants.ts'

declare module 'fastify' {
  interface FastifyRequest {
    /** Who a request to the token endpoint is for, proven (grants.grantClient); null until then. */
    oauthGrant: GrantClient | null
  }
}

const Token = Type.String({ minLength: 1, maxLength: 8192 })
const TokenType = Type.String({ minLength: 1, maxLength: 128 })

// RFC 6749 §4.4.2 and §6, RFC 8707 §2 (resource), and `audience` as Auth0 and others name it;
// RFC 8693 §2.1 (token exchange); RFC 7523 §2.1 (assertion). Unknown parameters are ignored
// (RFC 6749 §3.2); one given twice is invalid_request (§3.1); one of another grant is refused.
export const TokenRequestSchema = Type.Object({
  // Any other grant_type is unsupported_grant_type (RFC 6749 §5.2), not a validation error: a string, its values listed.
  grant_type: Type.String({ minLength: 1, maxLength: 128, description: `One of ${GRANTS.join(', ')}.`, examples: [...GRANTS] }),
  scope: Type.Optional(Type.String({ maxLength: 4096 })),
  resource: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 512 }), Type.Array(Type.String({ minLength: 1, maxLength: 512 }), { maxItems: 20 })])),
  audience: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
  refresh_token: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
  subject_token: Type.Optional(Token),
  subject_token_type: Type.Optional(TokenType),
  actor_token: Type.Optional(Token),
  actor_token_type: Type.Optional(TokenType),
  requested_token_type: Type.Optional(TokenType),
  assertion: Type.Optional(Token),
  ...ClientParametersSchema.properties
})

// RFC 6749 §5.1 and RFC 8693 §2.2.1; a refresh_token only for the refresh grant.
const TokenResponseSchema = Type.Object({
  access_token: Type.String(),
  issued_token_type: Type.Optional(Type.Literal(ACCESS_TOKEN_TYPE)),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer(),
  scope: Type.Optional(Type.String()),
  refresh_token: Type.Optional(Type.String())
})

/**
 * The OAuth 2.0 token endpoint (RFC 6749 §3.2): client credentials for services (§4.4), each
 * token one signature for one audience (RFC 8707), nothing written; the refresh grant (§6), the
 * form twin of /api/token/refresh for users' sessions; token exchange (RFC 8693) and the JWT
 * bearer grant (RFC 7523 §2.1) for workloads (services/oauth/grants.ts).
 */
const token: FastifyPluginAsyncTypebox = async (fastify) => {
  await fastify.register(formbody)
  const { grants, config } = fastify
  fastify.decorateRequest('oauthGrant', null)

  fastify.post('/token', {
    // The client, proven before the per-client rate limit counts it: a client is counted only
    // once proven, so nobody else can spend its allowance; failures count per address.
    preHandler: async (request) => {
      request.oauthGrant = await grants.grantClient(request.body, clientCredentialsOf(request, request.body))
    },
    onError: logClientRefusal,
    config: {
      acceptsForm: true,
      oauth: true,
      limits: [
        perIp('token', config.RATE_LIMIT_TOKEN_MAX),
        perKey('client', config.RATE_LIMIT_CLIENT_MAX, async (request) => request.oauthGrant?.client?.id ?? `ip:${normalizeIP(request.ip)}`)
      ]
    },
    schema: {
      tags: ['oauth'],
      summary: 'OAuth 2.0 token endpoint: client_credentials and the JWT bearer grant for services, token exchange for a service acting for a user, refresh_token for users',
      description: 'application/x-www-form-urlencoded as OAuth clients send it; JSON is taken too. Errors in RFC 6749 §5.2\'s shape. ' +
        'grant_type is one of client_credentials, refresh_token, urn:ietf:params:oauth:grant-type:token-exchange (RFC 8693: subject_token, ' +
        'subject_token_type, optional actor_token and actor_token_type, requested_token_type, audience or resource, scope) and ' +
        'urn:ietf:params:oauth:grant-type:jwt-bearer (RFC 7523 §2.1: assertion and client_id).',
      security: ClientSecurity,
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: TokenRequestSchema,
      response: { 200: TokenResponseSchema, ...oauthProblems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    // RFC 6749 §5.1: no cache keeps a token (Cache-Control: no-store is every answer's).
    reply.header('pragma', 'no-cache')
    return await grants.grant(request.oauthGrant!, request.body, callerOf(request))
  })
}

export default token
