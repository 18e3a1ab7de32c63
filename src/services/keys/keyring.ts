import { createSigner } from 'fast-jwt'
import { createHash } from 'node:crypto'
import pLimit from 'p-limit'
import { subkey } from '../../lib/subkeys.ts'
import type { Clock } from '../../lib/clock.ts'
import { TokenNotValidError } from '../../errors.ts'
import type { Jwk } from '../../schemas.ts'
import type { SigningKey } from './signing-keys.ts'
import type { ExchangedClaims, ServiceClaims, TokenClaims, TokenType } from '../auth/claims.ts'

export interface KeyringOptions {
  issuer: string
  /** Of users' tokens (JWT_AUDIENCE). */
  audience: string
  /** The client_id of users' access tokens (RFC 9068 §2.2): the first-party client. */
  clientId: string
  /** Refresh tokens are signed with a key derived from it, never published. */
  secret: string
  /** Loads the usable keys, newest first; the first active one signs. */
  load: () => Promise<SigningKey[]>
  /** At most one reload for an unknown kid in this many milliseconds: a flood of forged kids cannot hammer the database. */
  reloadIntervalMs?: number
  clock: Clock
}

/** A JOSE header as decoded: nothing in it is trusted yet. */
export type JoseHeader = Record<string, unknown>

/** The channel a change of `signing_keys` notifies (migration 0006): every replica reloads. */
export const KEYS_CHANNEL = 'authgate_keys'

// Access tokens are RFC 9068 JWTs.
export const ACCESS_TYP = 'at+jwt'
// Refresh tokens are HS256 under a key no JWKS holds: a verifier that only knows the JWKS can
// never take one for an access token, whatever claims it forgets to check.
const REFRESH_KID = 'refresh'
// Headers that would let a token name its own key (RFC 7515 §4.1.2-4.1.6): never followed.
const FORBIDDEN_HEADERS = ['jku', 'jwk', 'x5u', 'x5c']

/**
 * The signing keys of the database, and the refresh key: signs tokens with fast-jwt (the auth
 * service verifies with it), publishes the JWKS, and names the one key a token header may be verified with.
 */
export function createKeyring (options: KeyringOptions) {
  const refreshKey = subkey(options.secret, 'refresh-tokens').toString('base64url')
  const signRefresh = createSigner({ key: refreshKey, algorithm: 'HS256', kid: REFRESH_KID })
  let signAccess: ((payload: Record<string, unknown>) => string) | undefined
  let keys = new Map<string, SigningKey>()
  let jwks: { keys: Jwk[] } = { keys: [] }
  let jwksEtag = ''
  let lastKidLookup = Number.NEGATIVE_INFINITY
  let kidLookup: Promise<void> | undefined

  // One reload at a time, each reading after the last has been applied: two at once (the
  // minute's, a notification's, a kid's lookup) could answer out of order, and the older
  // reading, applied last, would sign with a key already retired.
  const oneAtATime = pLimit(1)
  const reload = (): Promise<void> => oneAtATime(apply)

  async function apply (): Promise<void> {
    const loaded = await options.load()
    const active = loaded.find((k) => k.retiredAt === null && !k.next)
    if (active === undefined) throw new Error('no active signing key')
    signAccess = createSigner({ key: active.privateKey, algorithm: active.alg, kid: active.kid, header: { alg: active.alg, typ: ACCESS_TYP } })
    keys = new Map(loaded.map((k) => [k.kid, k]))
    jwks = { keys: loaded.flatMap((k) => k.publicJwk === null ? [] : [k.publicJwk]) }
    jwksEtag = `"${createHash('sha256').update(JSON.stringify(jwks)).digest('base64url').slice(0, 27)}"`
  }

  // A kid this replica has not seen may come from a key another replica created: look in the
  // database, at most once per interval whatever the lookups find, so a flood of forged kids
  // costs one query. A database error propagates (503), rather than refusing a good token.
  async function afterReload (kid: string): Promise<SigningKey | undefined> {
    const now = options.clock.now().getTime()
    if (now - lastKidLookup >= (options.reloadIntervalMs ?? 10_000)) {
      lastKidLookup = now
      kidLookup ??= reload().finally(() => { kidLookup = undefined })
    }
    await kidLookup
    return keys.get(kid)
  }

  return {
    get jwks (): { keys: Jwk[] } {
      return jwks
    },

    /** A strong ETag of the JWKS: it changes exactly when the published keys do. */
    get jwksEtag (): string {
      return jwksEtag
    },

    reload,

    /** A user's token: the issuer and JWT_AUDIENCE added, and to an access token the first-party client_id. */
    sign (claims: Omit<TokenClaims, 'iss' | 'aud' | 'client_id'>): string {
      if (signAccess === undefined) throw new Error('keyring not loaded')
      const payload = { ...claims, iss: options.issuer, aud: options.audience }
      return claims.token_type === 'refresh' ? signRefresh(payload) : signAccess({ ...payload, client_id: options.clientId })
    },

    /** A service's access token, or one a client got by a token exchange, for its one audience: the issuer added. */
    signService (claims: Omit<ServiceClaims, 'iss'> | Omit<ExchangedClaims, 'iss'>): string {
      if (signAccess === undefined) throw new Error('keyring not loaded')
      return signAccess({ ...claims, iss: options.issuer })
    },

    /**
     * The key to verify a token of `type` with, given its unverified header: only the key its
     * `kid` names, only when the header's `alg` is that key's algorithm (so no HS256 signed
     * with a public key), never a key the header carries or points to. Throws a 401 otherwise.
     */
    async keyFor (header: JoseHeader, type: TokenType): Promise<string> {
      if (FORBIDDEN_HEADERS.some((name) => name in header) || typeof header.kid !== 'string') throw new TokenNotValidError()
      if (type === 'refresh') {
        if (header.kid !== REFRESH_KID || header.alg !== 'HS256') throw new TokenNotValidError()
        return refreshKey
      }
      if (header.typ !== ACCESS_TYP) throw new TokenNotValidError()
      const key = keys.get(header.kid) ?? await afterReload(header.kid)
      if (key === undefined || header.alg !== key.alg) throw new TokenNotValidError()
      return key.verifyKey
    }
  }
}

export type Keyring = ReturnType<typeof createKeyring>
