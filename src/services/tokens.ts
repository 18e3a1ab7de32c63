import { createDecoder, createSigner, createVerifier } from 'fast-jwt'
import { TokenExpiredError, TokenNotValidError } from '../errors.ts'
import type { Jwk } from '../schemas.ts'
import type { SigningKey } from './keys.ts'

export type TokenType = 'access' | 'refresh'

/** simplejwt's claims (token_type, user_id, jti, iat, exp) plus sub, sid, iss and aud. */
export interface TokenClaims {
  token_type: TokenType
  user_id: number
  sub: string
  sid: string
  jti: string
  iat: number
  exp: number
  iss: string
  aud: string
}

export interface KeyringOptions {
  issuer: string
  audience: string
  /** Loads the usable keys, newest first; the first active one signs. */
  load: () => Promise<SigningKey[]>
  /** At most one reload for an unknown kid in this many milliseconds: a flood of forged kids cannot hammer the database. */
  reloadIntervalMs?: number
  now?: () => Date
}

type Verifier = (token: string) => Record<string, unknown>

const decodeComplete = createDecoder({ complete: true })
/** The claims of a token this service just issued, read without verifying. */
export const readOwnClaims = createDecoder() as (token: string) => TokenClaims
// Headers that would let a token name its own key (RFC 7515 §4.1.2-4.1.5): never followed.
const FORBIDDEN_HEADERS = ['jku', 'jwk', 'x5u', 'x5c']
const REQUIRED_CLAIMS = ['token_type', 'user_id', 'sub', 'sid', 'jti', 'iat', 'exp', 'iss', 'aud']

/**
 * The signing keys of the database, with a verifier per kid pinned to that key's algorithm,
 * the issuer and the audience. Built from fast-jwt, the engine of @fastify/jwt.
 */
export class Keyring {
  readonly #options: KeyringOptions
  #signer: ((payload: Record<string, unknown>) => string) | undefined
  #verifiers = new Map<string, Verifier>()
  #jwks: { keys: Jwk[] } = { keys: [] }
  #lastKidLookup = Number.NEGATIVE_INFINITY
  #kidLookup: Promise<void> | undefined

  constructor (options: KeyringOptions) {
    this.#options = options
  }

  #now (): number {
    return this.#options.now?.().getTime() ?? Date.now()
  }

  get jwks (): { keys: Jwk[] } {
    return this.#jwks
  }

  async reload (): Promise<void> {
    const keys = await this.#options.load()
    const active = keys.find((k) => k.retiredAt === null)
    if (active === undefined) throw new Error('no active signing key')
    const { issuer: iss, audience: aud } = this.#options
    this.#signer = createSigner({ key: active.privateKey, algorithm: active.alg, kid: active.kid })
    this.#verifiers = new Map(keys.map((k) => [k.kid, createVerifier({
      key: k.verifyKey,
      algorithms: [k.alg],
      allowedIss: iss,
      allowedAud: aud,
      requiredClaims: REQUIRED_CLAIMS,
      // Expiry is checked below against the injectable clock.
      ignoreExpiration: true,
      cache: 1000
    }) as Verifier]))
    this.#jwks = { keys: keys.flatMap((k) => k.publicJwk === null ? [] : [k.publicJwk]) }
  }

  sign (claims: Omit<TokenClaims, 'iss' | 'aud'>): string {
    if (this.#signer === undefined) throw new Error('keyring not loaded')
    return this.#signer({ ...claims, iss: this.#options.issuer, aud: this.#options.audience })
  }

  /**
   * Verifies signature, algorithm, issuer, audience, expiry and the token type (either type
   * when `type` is absent); throws a 401 error otherwise.
   */
  async verify (token: string, type?: TokenType): Promise<TokenClaims> {
    let header: Record<string, unknown>
    try {
      header = (decodeComplete(token) as { header: Record<string, unknown> }).header
    } catch {
      throw new TokenNotValidError()
    }
    if (typeof header.kid !== 'string' || FORBIDDEN_HEADERS.some((h) => h in header)) {
      throw new TokenNotValidError()
    }
    const verifier = this.#verifiers.get(header.kid) ?? await this.#verifierAfterReload(header.kid)
    if (verifier === undefined) throw new TokenNotValidError()

    let claims: Record<string, unknown>
    try {
      claims = verifier(token)
    } catch {
      throw new TokenNotValidError()
    }
    // RFC 7519 §4.1.4: expired once the current time is at or after exp.
    if (typeof claims.exp !== 'number' || claims.exp * 1000 <= this.#now()) throw new TokenExpiredError()
    if (!(type === undefined ? claims.token_type === 'access' || claims.token_type === 'refresh' : claims.token_type === type) ||
        !Number.isSafeInteger(claims.user_id) ||
        typeof claims.sid !== 'string' || typeof claims.jti !== 'string') {
      throw new TokenNotValidError()
    }
    return claims as unknown as TokenClaims
  }

  // A kid this replica has not seen may come from a key another replica created: look in the
  // database, at most once per interval whatever the lookups find, so a flood of forged kids
  // costs one query. A database error propagates (503), rather than refusing a good token.
  async #verifierAfterReload (kid: string): Promise<Verifier | undefined> {
    if (this.#now() - this.#lastKidLookup >= (this.#options.reloadIntervalMs ?? 10_000)) {
      this.#lastKidLookup = this.#now()
      this.#kidLookup ??= this.reload().finally(() => { this.#kidLookup = undefined })
    }
    await this.#kidLookup
    return this.#verifiers.get(kid)
  }
}
