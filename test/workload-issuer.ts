import { exportJWK, generateKeyPair, SignJWT, UnsecuredJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Test } from 'tap'
import { closeOnce } from './local-server.ts'

/** A signing key of the issuer: its kid, its algorithm, the private half it signs with. */
export interface IssuerKey { kid: string, alg: 'RS256' | 'ES256', privateKey: CryptoKey, publicJwk: JWK }

/** How a token is signed: by the issuer's current key of `alg` (default), or by `key` with `kid` in the header. */
export interface Signing {
  alg?: 'RS256' | 'ES256' | 'HS256'
  /** A key the issuer does not publish, or an HMAC secret (HS256). */
  key?: CryptoKey | Uint8Array
  /** The header's kid; with `key`, none unless given. */
  kid?: string
  /** Header parameters besides alg and kid (GitHub's typ and x5t). */
  header?: Record<string, string>
}

/** Claims to put over a token's own; a claim given as undefined is left out of the token. */
export type ClaimChanges = Record<string, unknown>

export interface KubernetesTokenOptions {
  /** The TokenRequest's audiences: authgate's JWT_ISSUER for a token meant for it. */
  audience: string | string[]
  namespace?: string
  serviceAccount?: string
  /** The TokenRequest's expirationSeconds (a projected volume's; Kubernetes takes 600 and up, 3600 by default). */
  expirationSeconds?: number
  /**
   * The legacy case: a kubelet's kube-api-access volume asks 3607 s, and the API server, with
   * --service-account-extend-token-expiration (its default), makes the token last a year,
   * noting the 3607 s in kubernetes.io.warnafter.
   */
  extended?: boolean
  /** Seconds since the epoch; the issuer's clock by default. */
  iat?: number
  claims?: ClaimChanges
}

export interface GitHubTokenOptions {
  /** What the workflow asked core.getIDToken(audience) for: authgate's JWT_ISSUER. */
  audience: string
  repository?: string
  ref?: string
  iat?: number
  claims?: ClaimChanges
}

export interface WorkloadIssuer {
  /** http://127.0.0.1:PORT, without a trailing slash, as Kubernetes' and GitHub's issuers are written. */
  url: string
  /** Where the JWKS is served (the discovery document's jwks_uri). */
  jwksUri: string
  /** How many times each document was asked for. */
  fetches: { discovery: number, jwks: number }
  /** While true, both documents answer 503. */
  failing: boolean
  /** The keys it signs with now, by algorithm; each is in the JWKS. */
  current: { RS256: IssuerKey, ES256: IssuerKey }
  /** A new RS256 key (a new kid) that signs from now on; the previous one stays published, as a cluster keeps it while its tokens live. Its kid. */
  rotate: () => Promise<string>
  /** Takes the key of `kid` out of the JWKS. */
  retire: (kid: string) => void
  /** `claims` signed as `signing` says (the issuer's current RS256 key by default); `alg: 'none'` gives an unsecured JWT. */
  sign: (claims: JWTPayload, signing?: Signing | { alg: 'none' }) => Promise<string>
  /** A Kubernetes projected service-account token's shape, signed by the current RS256 key. */
  kubernetesToken: (options: KubernetesTokenOptions) => Promise<string>
  /** A GitHub Actions OIDC token's shape, signed by the current RS256 key. */
  githubToken: (options: GitHubTokenOptions) => Promise<string>
  /** Stops answering: its port refuses connections (also done at teardown). */
  close: () => Promise<void>
}

export interface IssuerOptions {
  /** The clock its tokens' iat is read from: the app's TestClock, so that both agree. */
  now: () => Date
  /** The JWKS path: Kubernetes serves /openid/v1/jwks (the default), GitHub /.well-known/jwks. */
  jwksPath?: string
  /** false: no discovery document (404), as for an issuer named by its JWKS URL alone. */
  discovery?: boolean
  /** The jwks_uri its discovery document names, if not its own JWKS. */
  namedJwksUri?: string
}

async function newKey (alg: 'RS256' | 'ES256'): Promise<IssuerKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg)
  return { kid: randomUUID(), alg, privateKey, publicJwk: await exportJWK(publicKey) }
}

// The claims `changes` leave: each given replaces the token's, undefined takes it out.
function changed (claims: Record<string, unknown>, changes: ClaimChanges = {}): JWTPayload {
  const result: Record<string, unknown> = { ...claims, ...changes }
  for (const [name, value] of Object.entries(changes)) if (value === undefined) delete result[name]
  return result as JWTPayload
}

const uid = (): string => randomUUID()

/**
 * A STAND-IN for the issuers of workload identities that the tests cannot reach or run here (a
 * Kubernetes API server's service-account issuer, GitHub Actions' OIDC provider): a real signing
 * issuer on 127.0.0.1, with keys of its own made by jose (never authgate's), serving an OpenID
 * Connect discovery document ({issuer, jwks_uri, …}) at /.well-known/openid-configuration and
 * its JWKS. It rotates its key (a new kid), goes down (close), and counts the documents read.
 *
 * Its tokens have the shapes of the real ones, as their documentation shows them; they are
 * stand-ins for tokens we cannot get here:
 *
 * - Kubernetes projected service-account token (kubernetes.io, "Managing Service Accounts",
 *   "Service account token volume projection"; the TokenRequest API): header {alg RS256, kid};
 *   iss the issuer URL (--service-account-issuer), sub "system:serviceaccount:<ns>:<sa>", aud
 *   the audiences asked (a list), iat = nbf, exp = iat + expirationSeconds, jti, and
 *   "kubernetes.io": {namespace, serviceaccount {name, uid}, pod {name, uid}, node {name, uid}},
 *   plus warnafter when the API server extended a 3607 s token to a year.
 * - GitHub Actions OIDC token (docs.github.com, "OpenID Connect reference", its example token):
 *   header {typ JWT, alg RS256, x5t, kid}; iss the issuer, sub
 *   "repo:<owner>/<repo>:ref:<ref>", aud as asked, jti, repository, repository_owner, ref, sha,
 *   workflow, job_workflow_ref, run_id, run_number, run_attempt, actor, event_name, ref_type,
 *   iat, nbf = iat - 600 and exp = iat + 300: the lifetime is that of GitHub's documented
 *   example token (5 minutes); the documentation states no lifetime in words.
 */
export async function startWorkloadIssuer (t: Test, { now, jwksPath = '/openid/v1/jwks', discovery = true, namedJwksUri }: IssuerOptions): Promise<WorkloadIssuer> {
  const current = { RS256: await newKey('RS256'), ES256: await newKey('ES256') }
  let published: IssuerKey[] = [current.RS256, current.ES256]
  const fetches = { discovery: 0, jwks: 0 }
  const state = { failing: false }
  let url = ''

  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://x').pathname
    const send = (status: number, body: unknown) => response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
    if (path === '/.well-known/openid-configuration' && discovery) {
      fetches.discovery++
      if (state.failing) return send(503, { error: 'unavailable' })
      return send(200, {
        issuer: url,
        jwks_uri: namedJwksUri ?? `${url}${jwksPath}`,
        response_types_supported: ['id_token'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: ['RS256', 'ES256'],
        claims_supported: ['sub', 'aud', 'exp', 'iat', 'iss', 'jti', 'nbf']
      })
    }
    if (path === jwksPath) {
      fetches.jwks++
      if (state.failing) return send(503, { error: 'unavailable' })
      return send(200, { keys: published.map((key) => ({ ...key.publicJwk, kid: key.kid, alg: key.alg, use: 'sig' })) })
    }
    send(404, { error: 'not found' })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const close = closeOnce(server)
  t.teardown(close)

  const seconds = (): number => Math.floor(now().getTime() / 1000)

  async function sign (claims: JWTPayload, signing: Signing | { alg: 'none' } = {}): Promise<string> {
    if (signing.alg === 'none') return new UnsecuredJWT(claims).encode()
    const { alg = 'RS256', key, kid, header = {} } = signing as Signing
    const own = alg === 'HS256' ? undefined : current[alg]
    const signer = key ?? own?.privateKey
    if (signer === undefined) throw new Error('an HS256 token needs its secret as key')
    const keyId = key === undefined ? own?.kid : kid
    return await new SignJWT(claims).setProtectedHeader({ ...header, alg, ...(keyId === undefined ? {} : { kid: keyId }) }).sign(signer)
  }

  return {
    url,
    jwksUri: `${url}${jwksPath}`,
    fetches,
    get failing () { return state.failing },
    set failing (value: boolean) { state.failing = value },
    current,
    async rotate () {
      current.RS256 = await newKey('RS256')
      published = [...published, current.RS256]
      return current.RS256.kid
    },
    retire (kid: string) {
      published = published.filter((key) => key.kid !== kid)
    },
    sign,
    async kubernetesToken ({ audience, namespace = 'shop', serviceAccount = 'orders-worker', expirationSeconds = 3600, extended = false, iat = seconds(), claims }) {
      const podName = `${serviceAccount}-7d9f8b6c5-x2k4q`
      return await sign(changed({
        aud: [audience].flat(),
        exp: iat + (extended ? 365 * 86_400 : expirationSeconds),
        iat,
        iss: url,
        jti: randomUUID(),
        'kubernetes.io': {
          namespace,
          node: { name: 'worker-1', uid: uid() },
          pod: { name: podName, uid: uid() },
          serviceaccount: { name: serviceAccount, uid: uid() },
          ...(extended ? { warnafter: iat + 3607 } : {})
        },
        nbf: iat,
        sub: `system:serviceaccount:${namespace}:${serviceAccount}`
      }, claims))
    },
    async githubToken ({ audience, repository = 'octo-org/octo-repo', ref = 'refs/heads/main', iat = seconds(), claims }) {
      const [owner] = repository.split('/')
      return await sign(changed({
        jti: randomUUID(),
        sub: `repo:${repository}:ref:${ref}`,
        aud: audience,
        ref,
        sha: 'd6e4b8a1c0f2e3d4b5a6978877665544332211ff',
        repository,
        repository_owner: owner,
        repository_visibility: 'private',
        run_id: '9876543210',
        run_number: '10',
        run_attempt: '1',
        runner_environment: 'github-hosted',
        actor: 'octocat',
        workflow: 'deploy',
        head_ref: '',
        base_ref: '',
        event_name: 'push',
        ref_type: 'branch',
        job_workflow_ref: `${repository}/.github/workflows/deploy.yml@${ref}`,
        iss: url,
        nbf: iat - 600,
        exp: iat + 300,
        iat
      }, claims), { header: { typ: 'JWT', x5t: 'c3RhbmQtaW4tdGh1bWJwcmludA' } })
    },
    close
  }
}
