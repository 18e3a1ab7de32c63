import formbody from '@fastify/formbody'
import { Type, type FastifyPluginAsyncTypebox, type Static } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { normalizeIP } from '@fastify/rate-limit'
import {
  InvalidClientError, InvalidGrantError, InvalidRequestError, InvalidScopeError, InvalidTargetError, UnsupportedGrantTypeError
} from '#src/errors.ts'
import { callerOf } from '#src/http/caller.ts'
import { clientCredentialsOf, logClientRefusal, NO_CLIENT_CREDENTIALS } from '#src/http/client-credentials.ts'
import { perIp, perKey } from '#src/http/limits.ts'
import { ClientParametersSchema, ClientSecurity, oauthProblems } from '#src/schemas.ts'
import type { ServiceClient } from '#src/services/oauth/clients.ts'

declare module 'fastify' {
  interface FastifyRequest {
    /** The client a request to the token endpoint authenticated as; null for the first-party (public) client. */
    oauthClient: ServiceClient | null
  }
}

const GRANTS = ['client_credentials', 'refresh_token'] as const

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
type TokenRequest = Static<typeof TokenRequestSchema>

// RFC 6749 §5.1; a refresh_token only for the refresh grant.
const TokenResponseSchema = Type.Object({
  access_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer(),
  scope: Type.Optional(Type.String()),
  refresh_token: Type.Optional(Type.String())
})

/** The one audience a client credentials request names: `resource` (RFC 8707) or `audience`, never two. */
function audienceOf (body: TokenRequest): string | undefined {
  const resources = body.resource === undefined ? [] : [body.resource].flat()
  const named = [...new Set([...resources, ...(body.audience === undefined ? [] : [body.audience])])]
  if (named.length > 1) throw new InvalidTargetError('A token is for one audience: name one resource (or audience).')
  return named[0]
}

/**
 * The OAuth 2.0 token endpoint (RFC 6749 §3.2): client credentials for services (§4.4), each
 * token one signature for one audience (RFC 8707), nothing written; and the refresh grant (§6),
 * the form twin of /api/token/refresh for users' sessions.
 */
const token: FastifyPluginAsyncTypebox = async (fastify) => {
  await fastify.register(formbody)
  const { clients, config } = fastify
  fastify.decorateRequest('oauthClient', null)

  // The client, authenticated before the per-client rate limit counts it: a client is counted
  // only once proven, so nobody else can spend its allowance; failures count per address.
  async function authenticateClient (request: FastifyRequest<{ Body: TokenRequest }>): Promise<void> {
    const { body } = request
    if (!(GRANTS as readonly string[]).includes(body.grant_type)) throw new UnsupportedGrantTypeError()
    const claimed = clientCredentialsOf(request, body)
    if (claimed === undefined || claimed.method === 'none') {
      // Services authenticate; users' refreshes come from the first-party (public) client.
      if (body.grant_type === 'client_credentials') throw new InvalidClientError(NO_CLIENT_CREDENTIALS)
      if (claimed !== undefined && claimed.id !== config.OAUTH_FIRST_PARTY_CLIENT_ID) throw new InvalidClientError(`the only public client is ${config.OAUTH_FIRST_PARTY_CLIENT_ID}; any other authenticates.`)
      return
    }
    request.oauthClient = await clients.authenticate(claimed)
  }

  fastify.post('/token', {
    preHandler: authenticateClient,
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
    const { body } = request
    // RFC 6749 §5.1: no cache keeps a token (Cache-Control: no-store is every answer's).
    reply.header('pragma', 'no-cache')
    if (body.grant_type === 'client_credentials') {
      return clients.issue(request.oauthClient!, { scope: body.scope, audience: audienceOf(body) })
    }
    // Users' tokens are the first-party client's, for JWT_AUDIENCE, and carry no scope.
    if (request.oauthClient !== null) throw new InvalidGrantError()
    if (body.refresh_token === undefined) throw new InvalidRequestError('refresh_token is required for grant_type=refresh_token.')
    if (body.scope !== undefined && body.scope.trim() !== '') throw new InvalidScopeError('Users\' tokens carry no scope.')
    if (audienceOf(body) !== undefined) throw new InvalidTargetError('Users\' tokens are for JWT_AUDIENCE alone.')
    try {
      const pair = await fastify.sessions.refresh(await fastify.verifyRefreshToken(request, reply), callerOf(request))
      return { access_token: pair.access, token_type: 'Bearer' as const, expires_in: fastify.secondsLeft(pair.access), refresh_token: pair.refresh }
    } catch (error) {
      // RFC 6749 §5.2: a refresh token that is not good is invalid_grant, a 400.
      if ((error as { statusCode?: number }).statusCode === 401) throw new InvalidGrantError()
      throw error
    }
  })
}

export default token
