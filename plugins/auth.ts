import cookie from '@fastify/cookie'
import jwt, { type JwtVerifyFunction, type TokenOrHeader } from '@fastify/jwt'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { createHmac } from 'node:crypto'
import {
  BadRequestError, DatabaseUnavailableError, InsufficientScopeError, NotAuthenticatedError, RouteNotFoundError, TokenExpiredError, TokenNotValidError
} from '../src/errors.ts'
import { safeEqual } from '../src/lib/constant-time.ts'
import { subkey } from '../src/lib/subkeys.ts'
import { TtlCache } from '../src/lib/ttl-cache.ts'
import type { TokenPair } from '../src/schemas.ts'
import type { JoseHeader } from '../src/services/keys/keyring.ts'
import type { ServiceClient } from '../src/services/oauth/clients.ts'
import type { UserWithRoles } from '../src/services/accounts/users.ts'
import type { SessionUser } from '../src/services/sessions/cache.ts'
import type { SignInStep } from '../src/services/sign-in.ts'
import { parseAnyClaims, parseClaims, type ServiceClaims, type TokenClaims, type TokenType, type VerifiedClaims } from '../src/services/auth/claims.ts'

/** Who a live token speaks for: a user of an active session, or an enabled service client with the scopes it still holds. */
export type Identity =
  | { kind: 'user', claims: TokenClaims, user: UserWithRoles }
  | { kind: 'service', claims: ServiceClaims, client: ServiceClient, scopes: string[] }

declare module '@fastify/jwt' {
  interface FastifyJWT {
    namespaces: 'access' | 'refresh' | 'token'
    user: SessionUser
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** onRequest hook: a valid access token (Bearer header, else the access cookie) of an active session. */
    authenticate: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
    /** The claims of the request's access token, verified, its session not checked; expired ones too with `allowExpired`. */
    verifyAccessToken: (request: FastifyRequest, reply: FastifyReply, options?: { allowExpired?: boolean }) => Promise<TokenClaims>
    /**
     * The claims of the refresh token of a request (body `refresh` or `refresh_token`, else the refresh cookie, which
     * must be this browser's: sent once, and bound to its host), verified; the refresh route
     * clears the cookies on a 401.
     */
    verifyRefreshToken: (request: FastifyRequest, reply: FastifyReply) => Promise<TokenClaims>
    /** The claims of the request's access token, a user's or a service's, verified; neither session nor client checked; expired ones too with `allowExpired`. */
    verifyAnyAccessToken: (request: FastifyRequest, reply: FastifyReply, options?: { allowExpired?: boolean }) => Promise<VerifiedClaims>
    /**
     * onRequest hook of an admin route: a live service token for the admin API's audience whose
     * client holds `scope` (403 otherwise); anything else, a user's token included, is answered
     * as a path that does not exist, so nobody learns from it what a token of theirs may do.
     */
    requireAdmin: (scope: string) => (request: FastifyRequest, reply: FastifyReply) => Promise<void>
    /** The claims of a token of any type and kind in the body's `token`, verified. */
    verifyBodyToken: (request: FastifyRequest) => Promise<VerifiedClaims>
    /**
     * Whom verified claims speak for, if the token is still live: a user's access token of an
     * active session, a refresh token not yet used, a service token of an enabled client.
     */
    liveIdentity: (verified: VerifiedClaims) => Promise<Identity | undefined>
    /** How many seconds a token authgate signed has left (its expires_in). */
    secondsLeft: (token: string) => number
  }
  interface FastifyRequest {
    /** The service client of an admin route's token (requireAdmin). */
    adminClient: ServiceClient | null
    accessJwtVerify: JwtVerifyFunction
    refreshJwtVerify: JwtVerifyFunction
    tokenJwtVerify: JwtVerifyFunction
    /** The verified claims of the request's token. */
    claims: TokenClaims | null
  }
  interface FastifyReply {
    setAuthCookies: (pair: TokenPair) => FastifyReply
    clearAuthCookies: () => FastifyReply
    /** A sign-in step's answer: the pair (and the cookies, with `cookies`), or the second step it needs (no pair, no cookie). */
    sendSignIn: (step: SignInStep, options: { cookies: boolean }) => FastifyReply
  }
}

// RFC 6750 §2.1: "Bearer" is case-insensitive; b64token characters only.
const BEARER = /^Bearer [A-Za-z0-9._~+/-]+=*$/i
// The refresh cookie goes only to the endpoints that take it.
const REFRESH_COOKIE_PATH = '/api/token'

/** How many times a cookie name appears in a Cookie header. */
function cookieCount (header: string | undefined, name: string): number {
  if (header === undefined) return 0
  return header.split(';').filter((pair) => pair.trimStart().startsWith(`${name}=`)).length
}

/** How many times a header was sent: Node keeps only the first of some, Authorization among them. */
function headerCount (request: FastifyRequest, name: string): number {
  let count = 0
  for (let i = 0; i < request.raw.rawHeaders.length; i += 2) {
    if (request.raw.rawHeaders[i]!.toLowerCase() === name) count++
  }
  return count
}

/** The refresh token of a body: simplejwt's `refresh`, or OAuth's `refresh_token` (RFC 6749 §6). */
function refreshInBody (request: FastifyRequest): string | undefined {
  const body = request.body as { refresh?: string, refresh_token?: string }
  return body.refresh ?? body.refresh_token
}

/** The type a token claims to be, read before its signature is checked: it only picks the key. */
function claimedType (payload: unknown): TokenType {
  const type = (payload as { token_type?: unknown } | null)?.token_type
  if (type !== 'access' && type !== 'refresh') throw new TokenNotValidError()
  return type
}

/**
 * Request authentication through @fastify/jwt (https://github.com/fastify/fastify-jwt), one
 * namespace per token source, each verifying with the one key the keyring names for the
 * header; the auth cookies (https://github.com/fastify/fastify-cookie).
 */
async function authPlugin (fastify: FastifyInstance): Promise<void> {
  const { config, keyring, sessions, clients, clock } = fastify
  const { cookieNames } = config
  await fastify.register(cookie)

  const base = {
    httpOnly: true,
    secure: config.COOKIE_SECURE,
    sameSite: config.COOKIE_SAMESITE,
    ...(config.COOKIE_DOMAIN === undefined ? {} : { domain: config.COOKIE_DOMAIN })
  } as const
  // The claims of a token authgate just signed.
  const claimsOfText = (token: string): { exp: number, sid: string } => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString())
  // A cookie lives as long as its token.
  const secondsLeft = (token: string): number => Math.max(0, claimsOfText(token).exp - Math.floor(clock.now().getTime() / 1000))
  // The refresh cookie cannot be the host's alone (__Host- wants Path=/), so a sibling subdomain
  // can plant one of its own for a longer path (cookie tossing), which the browser sends first,
  // and alone once ours is cleared. The binding cookie is the host's alone (no Domain, Path=/,
  // __Host- when Secure): an HMAC of the session id, which no other host can set, so a refresh
  // cookie is taken only beside the binding of its own session.
  const bindingKey = subkey(config.SECRET_KEY, 'refresh-binding')
  const bindingOf = (sessionId: string): string => createHmac('sha256', bindingKey).update(sessionId).digest('base64url')
  const hostOnly = { httpOnly: true, secure: config.COOKIE_SECURE, sameSite: config.COOKIE_SAMESITE, path: '/' } as const
  fastify.decorate('secondsLeft', secondsLeft)
  fastify.decorateReply('setAuthCookies', function (this: FastifyReply, pair: TokenPair) {
    const refreshLeft = secondsLeft(pair.refresh)
    return this
      .setCookie(cookieNames.access, pair.access, { ...base, path: '/', maxAge: secondsLeft(pair.access) })
      .setCookie(cookieNames.refresh, pair.refresh, { ...base, path: REFRESH_COOKIE_PATH, maxAge: refreshLeft })
      .setCookie(cookieNames.binding, bindingOf(claimsOfText(pair.refresh).sid), { ...hostOnly, maxAge: refreshLeft })
  })
  fastify.decorateReply('sendSignIn', function (this: FastifyReply, step: SignInStep, { cookies }: { cookies: boolean }) {
    if (step.kind === 'mfa') return this.send({ mfa_required: true, mfa_token: step.challenge.mfaToken, methods: step.challenge.methods })
    return (cookies ? this.setAuthCookies(step.pair) : this).send(step.pair)
  })
  fastify.decorateReply('clearAuthCookies', function (this: FastifyReply) {
    return this
      .clearCookie(cookieNames.access, { ...base, path: '/' })
      .clearCookie(cookieNames.refresh, { ...base, path: REFRESH_COOKIE_PATH })
      .clearCookie(cookieNames.binding, hostOnly)
  })

  // A cookie name sent twice was planted by a sibling subdomain or a longer path (cookie
  // tossing): which one is the user's cannot be told, so neither is taken, and the browser is
  // asked to drop every cookie of the site, the planted one with ours (Clear-Site-Data).
  function refuseTossedCookie (request: FastifyRequest, reply: FastifyReply, name: string): void {
    if (cookieCount(request.headers.cookie, name) > 1) refusePlanted(reply)
  }
  function refusePlanted (reply: FastifyReply): never {
    reply.clearAuthCookies().header('clear-site-data', '"cookies"')
    throw new TokenNotValidError()
  }

  // One namespace per token source. The secret is the key the keyring names for the header;
  // in `token`, either kind, the key of the kind the token claims (a refresh key signs only
  // refresh tokens, and the claim is verified with the signature).
  const namespace = (name: 'access' | 'refresh' | 'token', extractToken?: (request: FastifyRequest) => string | undefined, { cache = false } = {}) => ({
    namespace: name,
    decoratorName: 'claims',
    decode: { complete: true },
    secret: async (_request: FastifyRequest, token: TokenOrHeader) => {
      const { header, payload } = token as { header: JoseHeader, payload: unknown }
      return await keyring.keyFor(header, name === 'token' ? claimedType(payload) : name)
    },
    // Expiry is checked by parseClaims against the application clock. The audience of a refresh
    // token is JWT_AUDIENCE; an access token's is JWT_AUDIENCE for a user's, one of the client's
    // own for a service's: checked by `audienceChecked` once the kind is known.
    verify: { allowedIss: config.JWT_ISSUER, ...(name === 'refresh' ? { allowedAud: config.JWT_AUDIENCE } : {}), ignoreExpiration: true, extractToken, cache }
  })
  // A user's token is for JWT_AUDIENCE and nothing else (RFC 8725 §3.9); a service's audience
  // is judged against its client (clients.liveClient).
  const audienceChecked = (verified: VerifiedClaims): VerifiedClaims => {
    if (verified.kind === 'user' && verified.claims.aud !== config.JWT_AUDIENCE) throw new TokenNotValidError()
    return verified
  }
  await fastify.register(jwt, { ...namespace('access'), cookie: { cookieName: cookieNames.access, signed: false } })
  await fastify.register(jwt, namespace('refresh', (request) => refreshInBody(request) ?? request.cookies[cookieNames.refresh]))
  // The verify endpoint's tokens: fast-jwt keeps those that verified (by the token's hash), so
  // a service checking one token again and again pays for one signature check.
  await fastify.register(jwt, namespace('token', (request) => (request.body as { token: string }).token, { cache: true }))

  // Access tokens verified lately, by their exact text: a signature check, and decoding the
  // token to choose its key, are most of a request's work, and a client sends its token again
  // and again. Only tokens that verified are kept, at most a minute; their claims are checked
  // (expiry on the application clock) on every request, and the session as ever.
  const verified = new TtlCache<string, unknown>({ ttlMs: 60_000, max: 1000 })
  async function verifiedPayload (request: FastifyRequest, token: string): Promise<unknown> {
    const hit = verified.get(token)
    if (hit !== undefined) return hit
    const payload = await request.accessJwtVerify()
    verified.set(token, payload)
    return payload
  }

  fastify.decorateRequest('user', null as unknown as SessionUser)
  // The verified payload of the request's access token: the Bearer header, else the access cookie.
  async function accessPayload (request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    // Node keeps the first of several Authorization headers: a request with more is malformed.
    if (headerCount(request, 'authorization') > 1) throw new BadRequestError('More than one Authorization header.')
    const { authorization } = request.headers
    // An Authorization header that is not one Bearer token is a bad credential, never a reason to try the cookie.
    if (authorization !== undefined && !BEARER.test(authorization)) throw new TokenNotValidError()
    if (authorization === undefined) {
      if (request.cookies[cookieNames.access] === undefined) throw new NotAuthenticatedError()
      refuseTossedCookie(request, reply, cookieNames.access)
    }
    const token = authorization === undefined ? request.cookies[cookieNames.access]! : authorization.slice(7)
    return await verifiedPayload(request, token)
  }

  fastify.decorate('verifyAccessToken', async function verifyAccessToken (request: FastifyRequest, reply: FastifyReply, { allowExpired = false } = {}): Promise<TokenClaims> {
    const claims = parseClaims(await accessPayload(request, reply), 'access', clock.now(), { allowExpired })
    if (claims.aud !== config.JWT_AUDIENCE) throw new TokenNotValidError()
    return claims
  })

  fastify.decorate('verifyAnyAccessToken', async function verifyAnyAccessToken (request: FastifyRequest, reply: FastifyReply, { allowExpired = false } = {}): Promise<VerifiedClaims> {
    return audienceChecked(parseAnyClaims(await accessPayload(request, reply), 'access', clock.now(), { allowExpired }))
  })

  fastify.decorateRequest('adminClient', null)
  fastify.decorate('requireAdmin', (scope: string) => async function requireAdmin (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const nowhere = (): Error => new RouteNotFoundError(request.method, request.url.split('?')[0])
    let verified
    try {
      verified = await fastify.verifyAnyAccessToken(request, reply, { allowExpired: true })
    } catch (error) {
      if (error instanceof DatabaseUnavailableError) throw error
      throw nowhere()
    }
    if (verified.kind !== 'service' || verified.claims.aud !== config.adminAudience) throw nowhere()
    // A token of the admin API's own: what is wrong with it may be said.
    if (verified.claims.exp * 1000 <= clock.now().getTime()) throw new TokenExpiredError()
    const live = await clients.liveClient(verified.claims)
    if (live === undefined) throw new TokenNotValidError()
    if (!live.scopes.includes(scope)) throw new InsufficientScopeError(scope)
    request.adminClient = live.client
  })

  fastify.decorate('authenticate', async function authenticate (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const claims = await fastify.verifyAccessToken(request, reply)
    // Checked on every request: a logged-out or revoked session stops working here at once.
    const user = await sessions.userOf(claims)
    if (user === undefined) throw new TokenNotValidError()
    request.claims = claims
    request.user = user
  })

  fastify.decorate('verifyRefreshToken', async function verifyRefreshToken (request: FastifyRequest, reply: FastifyReply): Promise<TokenClaims> {
    const fromCookie = refreshInBody(request) === undefined
    if (fromCookie) {
      if (request.cookies[cookieNames.refresh] === undefined) throw new NotAuthenticatedError()
      refuseTossedCookie(request, reply, cookieNames.refresh)
    }
    const claims = parseClaims(await request.refreshJwtVerify(), 'refresh', clock.now())
    if (fromCookie) {
      if (!safeEqual(request.cookies[cookieNames.binding] ?? '', bindingOf(claims.sid))) refusePlanted(reply)
    }
    return claims
  })

  fastify.decorate('verifyBodyToken', async function verifyBodyToken (request: FastifyRequest): Promise<VerifiedClaims> {
    return audienceChecked(parseAnyClaims(await request.tokenJwtVerify(), 'any', clock.now()))
  })

  fastify.decorate('liveIdentity', async function liveIdentity (verified: VerifiedClaims): Promise<Identity | undefined> {
    if (verified.kind === 'user') {
      const user = await sessions.liveUser(verified.claims)
      return user === undefined ? undefined : { kind: 'user', claims: verified.claims, user }
    }
    const live = await clients.liveClient(verified.claims)
    return live === undefined ? undefined : { kind: 'service', claims: verified.claims, ...live }
  })
}

export default fp(authPlugin, { name: 'auth', dependencies: ['config', 'services'] })
