import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { BadRequestError, DatabaseUnavailableError, NotAuthenticatedError, RouteNotFoundError, TokenNotValidError } from '../src/errors.ts'
import type { ServiceClient } from '../src/services/oauth/clients.ts'
import type { SessionUser } from '../src/services/sessions/cache.ts'
import type { TokenClaims, VerifiedClaims } from '../src/services/auth/claims.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** onRequest hook: a valid access token (Bearer header, else the access cookie) of an active session. */
    authenticate: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
    /** The claims of the request's access token, verified, its session not checked; expired ones too with `allowExpired`. */
    verifyAccessToken: (request: FastifyRequest, reply: FastifyReply, options?: { allowExpired?: boolean }) => Promise<TokenClaims>
    /**
     * The claims of the refresh token of a request (body `refresh`, else the refresh cookie, which
     * must be this browser's: sent once, and bound to its host), verified; the refresh route
     * clears the cookies on a 401.
     */
    verifyRefreshToken: (request: FastifyRequest, reply: FastifyReply) => Promise<TokenClaims>
    /** The claims of the request's access token, a user's or a service's, verified; neither session nor client checked. */
    verifyAnyAccessToken: (request: FastifyRequest, reply: FastifyReply) => Promise<VerifiedClaims>
    /**
     * onRequest hook of an admin route: a live service token for the admin API's audience whose
     * client holds `scope` (403 otherwise); anything else, a user's token included, is answered
     * as a path that does not exist, so nobody learns from it what a token of theirs may do.
     */
    requireAdmin: (scope: string) => (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  }
  interface FastifyRequest {
    /** The user of the request's session (authenticate). */
    user: SessionUser
    /** The service client of an admin route's token (requireAdmin). */
    adminClient: ServiceClient | null
    /** The verified claims of the request's token. */
    claims: TokenClaims | null
  }
}

// RFC 6750 §2.1: "Bearer" is case-insensitive; b64token characters only.
const BEARER = /^Bearer [A-Za-z0-9._~+/-]+=*$/i

/** How many times a header was sent: Node keeps only the first of some, Authorization among them. */
function headerCount (request: FastifyRequest, name: string): number {
  let count = 0
  for (let i = 0; i < request.raw.rawHeaders.length; i += 2) {
    if (request.raw.rawHeaders[i]!.toLowerCase() === name) count++
  }
  return count
}

/** The refresh token of a body: simplejwt's `refresh`. */
function refreshInBody (request: FastifyRequest): string | undefined {
  return (request.body as { refresh?: string }).refresh
}

/**
 * Request authentication: the token of a request (the Bearer header, the cookies), made an
 * identity by the auth service (src/services/auth/auth.ts); the hooks that guard routes.
 */
async function authPlugin (fastify: FastifyInstance): Promise<void> {
  const { config, auth } = fastify
  const { cookieNames } = config

  fastify.decorateRequest('user', null as unknown as SessionUser)
  fastify.decorateRequest('claims', null)
  // The request's access token: the Bearer header, else the access cookie.
  function accessToken (request: FastifyRequest, reply: FastifyReply): string {
    // Node keeps the first of several Authorization headers: a request with more is malformed.
    if (headerCount(request, 'authorization') > 1) throw new BadRequestError('More than one Authorization header.')
    const { authorization } = request.headers
    // An Authorization header that is not one Bearer token is a bad credential, never a reason to try the cookie.
    if (authorization !== undefined && !BEARER.test(authorization)) throw new TokenNotValidError()
    if (authorization !== undefined) return authorization.slice(7)
    const token = request.cookies[cookieNames.access]
    if (token === undefined) throw new NotAuthenticatedError()
    fastify.refuseTossedCookie(request, reply, cookieNames.access)
    if (token === '') throw new NotAuthenticatedError()
    return token
  }

  fastify.decorate('verifyAccessToken', async function verifyAccessToken (request: FastifyRequest, reply: FastifyReply, options: { allowExpired?: boolean } = {}): Promise<TokenClaims> {
    return await auth.verifyAccess(accessToken(request, reply), options)
  })

  fastify.decorate('verifyAnyAccessToken', async function verifyAnyAccessToken (request: FastifyRequest, reply: FastifyReply): Promise<VerifiedClaims> {
    return await auth.verifyAnyAccess(accessToken(request, reply))
  })

  fastify.decorateRequest('adminClient', null)
  fastify.decorate('requireAdmin', (scope: string) => async function requireAdmin (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const nowhere = (): Error => new RouteNotFoundError(request.method, request.url.split('?')[0])
    let verified
    try {
      verified = await auth.verifyAnyAccess(accessToken(request, reply), { allowExpired: true })
    } catch (error) {
      if (error instanceof DatabaseUnavailableError) throw error
      throw nowhere()
    }
    const identity = await auth.authorize(verified, { audience: config.adminAudience, scopes: [scope], elsewhere: nowhere })
    request.adminClient = identity.kind === 'service' ? identity.client : null
  })

  fastify.decorate('authenticate', async function authenticate (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const claims = await fastify.verifyAccessToken(request, reply)
    request.user = await auth.sessionUser(claims)
    request.claims = claims
  })

  fastify.decorate('verifyRefreshToken', async function verifyRefreshToken (request: FastifyRequest, reply: FastifyReply): Promise<TokenClaims> {
    const inBody = refreshInBody(request)
    if (inBody !== undefined) return await auth.verifyRefresh(inBody)
    const token = request.cookies[cookieNames.refresh]
    if (token === undefined) throw new NotAuthenticatedError()
    fastify.refuseTossedCookie(request, reply, cookieNames.refresh)
    const claims = await auth.verifyRefresh(token)
    fastify.refuseUnboundRefresh(request, reply, claims.sid)
    return claims
  })
}

export default fp(authPlugin, { name: 'auth', dependencies: ['config', 'services', 'cookies'] })
