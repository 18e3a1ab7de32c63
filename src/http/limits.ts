import type { FastifyRequest } from 'fastify'
import type { Config } from '../config.ts'

/**
 * A rate limit a route declares (route config `limits`; plugins/security.ts counts them, per
 * RATE_LIMIT_WINDOW): `max` requests of one client address to this route, or `max` requests
 * for one key the route names from the request (an account), from any address, over every
 * route that names the same `name`.
 */
export interface Limit {
  /** What is counted: the counts of routes naming one name meet when they are per key. */
  name: string
  max: number
  /** 'ip', or the key of the request, read once the body is validated; undefined: this request is not counted here. */
  by: 'ip' | ((request: FastifyRequest) => Promise<string | undefined>)
}

/** `max` requests a window from one client address to the route. */
export const perIp = (name: string, max: number): Limit => ({ name, max, by: 'ip' })

/** `max` requests a window for the key `key` gives, from any address, on every route naming `name`. */
export const perKey = (name: string, max: number, key: (request: FastifyRequest) => Promise<string | undefined>): Limit => ({ name, max, by: key })

type LimitSettings = Pick<Config, 'RATE_LIMIT_CREDENTIALS_MAX' | 'RATE_LIMIT_IDENTIFIER_MAX' | 'RATE_LIMIT_MAIL_MAX' | 'RATE_LIMIT_MAIL_GLOBAL_MAX'>

/**
 * The limits of a route that takes a credential (a password, a code): per client address, and,
 * with `account` naming the account tried, per account over every such route, so that guesses
 * spread over addresses still stop.
 */
export const credentialLimits = (config: LimitSettings, account?: (request: FastifyRequest) => Promise<string | undefined>): Limit[] => [
  perIp('credentials', config.RATE_LIMIT_CREDENTIALS_MAX),
  ...(account === undefined ? [] : [perKey('account', config.RATE_LIMIT_IDENTIFIER_MAX, account)])
]

/** The limits of a route that mails an address: per client address, and one count for everyone, so a 429 from either says nothing about an account. */
export const mailLimits = (config: LimitSettings): Limit[] => [
  perIp('mail', config.RATE_LIMIT_MAIL_MAX),
  perKey('mail-everyone', config.RATE_LIMIT_MAIL_GLOBAL_MAX, async () => 'everyone')
]
