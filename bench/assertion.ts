// The JWT bearer grant's assertions (RFC 7523, workload identity), one per request: autocannon
// builds a request synchronously (setupRequest), so they are signed here with node:crypto and
// the key of test/workload-issuer.ts's issuer, not with jose's asynchronous SignJWT.
import { KeyObject, randomUUID, sign } from 'node:crypto'
import type { JWTPayload } from 'jose'
import type { IssuerKey } from '../test/workload-issuer.ts'

const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

/**
 * A maker of fresh assertions: `template`'s claims (a token the issuer made, its shape) with a
 * new jti, iat = nbf = now and exp = now + `lifetimeS` each, signed ES256 (JWS's P-256 signature,
 * r and s of 32 bytes each) by `key` under its kid, as the issuer's own tokens are.
 */
export function assertionMaker (key: IssuerKey, template: JWTPayload, lifetimeS: number): () => string {
  if (key.alg !== 'ES256') throw new Error(`an ES256 key is needed, not ${key.alg}`)
  // The issuer's keys are jose's, non-extractable CryptoKeys: Node 24 signs with them synchronously
  // only through KeyObject.from, which it warns is deprecated for such keys (DEP0204, once per
  // run). test/workload-issuer.ts is left as the tests use it; making its keys extractable there
  // would end the warning.
  const privateKey = KeyObject.from(key.privateKey)
  const header = part({ alg: 'ES256', kid: key.kid })
  return () => {
    const now = Math.floor(Date.now() / 1000)
    const input = `${header}.${part({ ...template, jti: randomUUID(), iat: now, nbf: now, exp: now + lifetimeS })}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
}

/** Microseconds one assertion takes to make in this process: the median of `batches` timed batches of `count`. */
export function assertionCostUs (make: () => string, count = 500, batches = 5): number {
  const times: number[] = []
  for (let b = 0; b < batches; b++) {
    const t0 = performance.now()
    for (let i = 0; i < count; i++) make()
    times.push((performance.now() - t0) * 1000 / count)
  }
  return times.sort((a, b) => a - b)[batches >> 1]!
}
