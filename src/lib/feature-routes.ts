import type { Features } from '../config.ts'

/** A feature whose routes exist only when a setting turns it on. */
interface Feature {
  /** Its switch in `config.features`, derived once from the configuration (src/config.ts). */
  key: keyof Features
  /** What it is, in the 404's detail. */
  name: string
  /** The setting that turns it on, as an operator writes it. */
  setting: string
  /** Its routes as `METHOD /path`; a path ending in `/*` stands for everything under it. */
  routes: string[]
  /** Its route files under routes/, which the app does not load while it is off (src/app.ts); a plugin's feature has none. */
  files: string[]
}

/**
 * The features that are off unless configured, and their routes. The app loads a feature's
 * route files only when it is on, so no route file says whether it exists; test/docs.test.ts
 * holds this list to the routes the app registers with every feature on and with every one
 * off, so a new feature's routes cannot be missing here. The admin API's password-reset route is
 * not among `routes`: the admin API answers everyone but an operator as a path that does not
 * exist (docs/operating-accounts.md), so its 404 names no setting.
 */
export const OPTIONAL_FEATURES: readonly Feature[] = [
  {
    key: 'passwordReset',
    name: 'the password reset',
    setting: 'APP_RESET_URL (the front end\'s reset page)',
    routes: ['POST /api/auth/password/forgot', 'POST /api/auth/password/reset', 'POST /api/auth/password/reset/inspect'],
    files: ['/api/auth/password/forgot.ts', '/api/auth/password/reset.ts', '/api/auth/password/reset/inspect.ts', '/api/admin/users/password-reset.ts']
  },
  {
    key: 'emailVerification',
    name: 'email verification',
    setting: 'EMAIL_VERIFICATION=optional or required, with APP_VERIFY_URL',
    routes: ['POST /api/auth/email/verification', 'POST /api/auth/email/verify'],
    files: ['/api/auth/email/verification.ts', '/api/auth/email/verify.ts']
  },
  {
    key: 'emailSignIn',
    name: 'the sign-in by a mailed code',
    setting: 'EMAIL_SIGN_IN=true',
    routes: ['POST /api/auth/email/sign-in', 'POST /api/auth/email/sign-in/verify'],
    files: ['/api/auth/email/sign-in.ts', '/api/auth/email/sign-in/verify.ts']
  },
  {
    key: 'upstream',
    name: 'the sign-in with identity providers',
    setting: 'OIDC_PROVIDERS (with each provider\'s OIDC_<NAME>_* settings)',
    routes: ['GET /api/auth/oidc/*', 'POST /api/auth/oidc/*', 'GET /api/auth/identities', 'POST /api/auth/identities/link', 'DELETE /api/auth/identities/*'],
    files: ['/api/auth/oidc/start.ts', '/api/auth/oidc/callback.ts', '/api/auth/oidc/id-token.ts', '/api/auth/identities.ts', '/api/admin/users/identities.ts']
  },
  {
    key: 'passkeys',
    name: 'passkeys',
    setting: 'WEBAUTHN_RP_ID (with WEBAUTHN_ORIGINS)',
    routes: ['GET /api/auth/passkeys', 'POST /api/auth/passkeys/*', 'PATCH /api/auth/passkeys/*', 'DELETE /api/auth/passkeys/*'],
    files: [
      '/api/auth/passkeys.ts', '/api/auth/passkeys/registration/options.ts', '/api/auth/passkeys/registration/verify.ts',
      '/api/auth/passkeys/authentication/options.ts', '/api/auth/passkeys/authentication/verify.ts', '/api/admin/users/passkeys.ts'
    ]
  },
  {
    key: 'metrics',
    name: 'the metrics',
    setting: 'METRICS_TOKEN',
    routes: ['GET /metrics'],
    files: []
  },
  {
    key: 'docs',
    name: 'the OpenAPI document and its UI',
    setting: 'DOCS_ENABLED=true (off by default in production)',
    routes: ['GET /docs', 'GET /docs/*'],
    files: []
  }
]

/** Whether a route file (`/api/auth/email/verify.ts`, as @fastify/autoload names it) is of a feature that is off. */
export const routeFileOff = (features: Features, file: string): boolean =>
  OPTIONAL_FEATURES.some((feature) => !features[feature.key] && feature.files.includes(file))

/** Whether `route` (`GET /docs/*`) serves `method` `path`; a GET route serves HEAD too, as Fastify does. */
export function serves (route: string, method: string, path: string): boolean {
  const [routeMethod, routePath = ''] = route.split(' ')
  if (routeMethod !== method && !(routeMethod === 'GET' && method === 'HEAD')) return false
  return routePath.endsWith('/*') ? path.startsWith(routePath.slice(0, -1)) : path === routePath
}

/**
 * The feature that is off and would serve `method` `path`, for a 404 that says what turns it
 * on; undefined for a path no feature has, or whose feature is on (it says nothing of others).
 */
export function offFeatureOf (features: Features, method: string, url: string): Feature | undefined {
  // As the router takes it: no query, a trailing slash or none (ignoreTrailingSlash).
  const path = (url.split('?')[0] ?? '').replace(/(.)\/$/, '$1')
  return OPTIONAL_FEATURES.find((feature) => !features[feature.key] && feature.routes.some((route) => serves(route, method, path)))
}
