import cookie from '@fastify/cookie'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { createHmac } from 'node:crypto'
import { TokenNotValidError } from '../src/errors.ts'
import { safeEqual } from '../src/lib/constant-time.ts'
import { subkey } from '../src/lib/subkeys.ts'
import type { TokenPair } from '../src/schemas.ts'
import { secondsLeft, sessionOfSigned } from '../src/services/auth/claims.ts'
import type { SignInStep } from '../src/services/sign-in.ts'
import { FLOW_TTL_S } from '../src/services/upstream/upstream.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Refuses a cookie sent twice (cookie tossing): a 401, and the browser told to drop the site's cookies. */
    refuseTossedCookie: (request: FastifyRequest, reply: FastifyReply, name: string) => void
    /** Refuses, as a tossed cookie, a refresh cookie of `sessionId` without that session's binding beside it. */
    refuseUnboundRefresh: (request: FastifyRequest, reply: FastifyReply, sessionId: string) => void
  }
  interface FastifyReply {
    setAuthCookies: (pair: TokenPair) => FastifyReply
    clearAuthCookies: () => FastifyReply
    /** A sign-in step's answer: the pair (and the cookies, with `cookies`), or the second step it needs (no pair, no cookie). */
    sendSignIn: (step: SignInStep, options: { cookies: boolean }) => FastifyReply
    /** The cookie binding an upstream sign-in's flow to this browser: its single-use secret, for FLOW_TTL_S. */
    setFlowCookie: (flowSecret: string) => FastifyReply
    clearFlowCookie: () => FastifyReply
  }
}

// The refresh cookie goes only to the endpoints that take it.
const REFRESH_COOKIE_PATH = '/api/token'

/** How many times a cookie name appears in a Cookie header. */
function cookieCount (header: string | undefined, name: string): number {
  if (header === undefined) return 0
  return header.split(';').filter((pair) => pair.trimStart().startsWith(`${name}=`)).length
}

/**
 * The auth cookies (https://github.com/fastify/fastify-cookie): the access and refresh tokens,
 * and the binding that makes a refresh cookie this host's own; their answers to sign-in.
 */
async function cookiesPlugin (fastify: FastifyInstance): Promise<void> {
  const { config, clock } = fastify
  const { cookieNames } = config
  await fastify.register(cookie)

  const base = {
    httpOnly: true,
    secure: config.COOKIE_SECURE,
    sameSite: config.COOKIE_SAMESITE,
    ...(config.COOKIE_DOMAIN === undefined ? {} : { domain: config.COOKIE_DOMAIN })
  } as const
  // A cookie lives as long as its token.
  const left = (token: string): number => secondsLeft(token, clock.now())
  // The refresh cookie cannot be the host's alone (__Host- wants Path=/), so a sibling subdomain
  // can plant one of its own for a longer path (cookie tossing), which the browser sends first,
  // and alone once ours is cleared. The binding cookie is the host's alone (no Domain, Path=/,
  // __Host- when Secure): an HMAC of the session id, which no other host can set, so a refresh
  // cookie is taken only beside the binding of its own session.
  const bindingKey = subkey(config.SECRET_KEY, 'refresh-binding')
  const bindingOf = (sessionId: string): string => createHmac('sha256', bindingKey).update(sessionId).digest('base64url')
  const hostOnly = { httpOnly: true, secure: config.COOKIE_SECURE, sameSite: config.COOKIE_SAMESITE, path: '/' } as const
  fastify.decorateReply('setAuthCookies', function (this: FastifyReply, pair: TokenPair) {
    const refreshLeft = left(pair.refresh)
    return this
      .setCookie(cookieNames.access, pair.access, { ...base, path: '/', maxAge: left(pair.access) })
      .setCookie(cookieNames.refresh, pair.refresh, { ...base, path: REFRESH_COOKIE_PATH, maxAge: refreshLeft })
      .setCookie(cookieNames.binding, bindingOf(sessionOfSigned(pair.refresh)), { ...hostOnly, maxAge: refreshLeft })
  })
  fastify.decorateReply('sendSignIn', function (this: FastifyReply, step: SignInStep, { cookies }: { cookies: boolean }) {
    if (step.kind === 'mfa') return this.send({ mfa_required: true, mfa_token: step.challenge.mfaToken, methods: step.challenge.methods })
    return (cookies ? this.setAuthCookies(step.pair) : this).send(step.pair)
  })
  // The flow cookie must come back with the provider's redirect, a top-level GET from another
  // site: SameSite=Lax whatever COOKIE_SAMESITE says (Strict would drop it, None is not needed).
  const flowCookie = { httpOnly: true, secure: config.COOKIE_SECURE, sameSite: 'lax', path: '/' } as const
  fastify.decorateReply('setFlowCookie', function (this: FastifyReply, flowSecret: string) {
    return this.setCookie(cookieNames.flow, flowSecret, { ...flowCookie, maxAge: FLOW_TTL_S })
  })
  fastify.decorateReply('clearFlowCookie', function (this: FastifyReply) {
    return this.clearCookie(cookieNames.flow, flowCookie)
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
  function refusePlanted (reply: FastifyReply): never {
    reply.clearAuthCookies().header('clear-site-data', '"cookies"')
    throw new TokenNotValidError()
  }
  fastify.decorate('refuseTossedCookie', function refuseTossedCookie (request: FastifyRequest, reply: FastifyReply, name: string): void {
    if (cookieCount(request.headers.cookie, name) > 1) refusePlanted(reply)
  })
  fastify.decorate('refuseUnboundRefresh', function refuseUnboundRefresh (request: FastifyRequest, reply: FastifyReply, sessionId: string): void {
    if (!safeEqual(request.cookies[cookieNames.binding] ?? '', bindingOf(sessionId))) refusePlanted(reply)
  })
}

export default fp(cookiesPlugin, { name: 'cookies', dependencies: ['config'] })
