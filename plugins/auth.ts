import cookie from '@fastify/cookie'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { NotAuthenticatedError, TokenNotValidError } from '../src/errors.ts'
import { durationToSeconds } from '../src/lib/duration.ts'
import { SecretBox } from '../src/lib/secret-box.ts'
import type { TokenPair, User } from '../src/schemas.ts'
import { findSessionUser, type TokenContext } from '../src/services/sessions.ts'
import { readOwnClaims } from '../src/services/tokens.ts'
import { dummyHash } from '../src/services/users.ts'

export interface AuthenticatedUser extends User {
  sessionId: string
}

declare module 'fastify' {
  interface FastifyInstance {
    tokens: TokenContext
    /** onRequest hook: a valid access token (Bearer header, else the access cookie) of an active session. */
    authenticate: (request: FastifyRequest) => Promise<void>
    cookieNames: { access: string, refresh: string }
  }
  interface FastifyRequest {
    user: AuthenticatedUser | null
  }
  interface FastifyReply {
    setAuthCookies: (pair: TokenPair) => FastifyReply
    clearAuthCookies: () => FastifyReply
  }
}

export interface AuthPluginOptions {
  /** The clock; tests move it instead of sleeping. */
  now?: () => Date
}

// The refresh cookie goes only to the endpoints that take it.
const REFRESH_COOKIE_PATH = '/api/token'
// RFC 6750 §2.1: "Bearer" is case-insensitive; b64token characters only.
const BEARER = /^Bearer +([A-Za-z0-9._~+/-]+=*) *$/i

/** Token context, the `authenticate` hook and the auth cookies (https://github.com/fastify/fastify-cookie). */
async function authPlugin (fastify: FastifyInstance, opts: AuthPluginOptions): Promise<void> {
  const { config, db, keys } = fastify
  await fastify.register(cookie)

  // Made now, so that the first login of an unknown user costs what any failed login costs.
  await dummyHash(config.BCRYPT_COST)

  const tokens: TokenContext = {
    keys,
    box: new SecretBox(config.SECRET_KEY, 'refresh-successor'),
    now: opts.now ?? (() => new Date()),
    accessTtlS: durationToSeconds(config.JWT_ACCESS_TOKEN_LIFETIME),
    refreshTtlS: durationToSeconds(config.JWT_REFRESH_TOKEN_LIFETIME),
    sessionMaxS: durationToSeconds(config.AUTH_SESSION_MAX_LIFETIME),
    reuseGraceS: config.AUTH_REUSE_GRACE_S
  }
  fastify.decorate('tokens', tokens)

  // Cookie prefixes (RFC 6265bis §4.1.3): __Host- needs Secure, Path=/ and no Domain, so the
  // access cookie takes it when it can; the refresh cookie has its own path, so __Secure-.
  const secure = config.COOKIE_SECURE
  const cookieNames = {
    access: `${secure ? (config.COOKIE_DOMAIN === undefined ? '__Host-' : '__Secure-') : ''}access_token`,
    refresh: `${secure ? '__Secure-' : ''}refresh_token`
  }
  fastify.decorate('cookieNames', cookieNames)
  const base = {
    httpOnly: true,
    secure,
    sameSite: config.COOKIE_SAMESITE,
    ...(config.COOKIE_DOMAIN === undefined ? {} : { domain: config.COOKIE_DOMAIN })
  } as const

  // A cookie lives as long as its token: a refresh token capped by the session's end, or one
  // answered again within the grace, has less than the full lifetime left.
  const secondsLeft = (token: string): number => Math.max(0, readOwnClaims(token).exp - Math.floor(tokens.now().getTime() / 1000))
  fastify.decorateReply('setAuthCookies', function (this: FastifyReply, pair: TokenPair) {
    return this
      .setCookie(cookieNames.access, pair.access, { ...base, path: '/', maxAge: secondsLeft(pair.access) })
      .setCookie(cookieNames.refresh, pair.refresh, { ...base, path: REFRESH_COOKIE_PATH, maxAge: secondsLeft(pair.refresh) })
  })
  fastify.decorateReply('clearAuthCookies', function (this: FastifyReply) {
    return this
      .clearCookie(cookieNames.access, { ...base, path: '/' })
      .clearCookie(cookieNames.refresh, { ...base, path: REFRESH_COOKIE_PATH })
  })

  fastify.decorateRequest('user', null)
  fastify.decorate('authenticate', async function authenticate (request: FastifyRequest): Promise<void> {
    const header = request.headers.authorization
    let token: string | undefined
    if (header !== undefined) {
      token = BEARER.exec(header)?.[1]
      if (token === undefined) throw new TokenNotValidError()
    } else {
      token = request.cookies[cookieNames.access]
    }
    if (token === undefined || token === '') throw new NotAuthenticatedError()

    const claims = await keys.verify(token, 'access')
    // Checked on every request: a logged-out or revoked session stops working here at once.
    const user = await findSessionUser(db, claims.sid, claims.user_id, tokens.now())
    if (user === undefined) throw new TokenNotValidError()
    request.user = { ...user, sessionId: claims.sid }
  })
}

export default fp(authPlugin, { name: 'auth', dependencies: ['config', 'db', 'keys'] })
