import type { Config } from '../config.ts'

/** A feature whose routes exist only when a setting turns it on. */
interface Feature {
  /** What it is, in the 404's detail. */
  name: string
  /** The setting that turns it on, as an operator writes it. */
  setting: string
  on: (config: Pick<Config, 'APP_RESET_URL' | 'EMAIL_VERIFICATION' | 'EMAIL_SIGN_IN' | 'METRICS_TOKEN' | 'DOCS_ENABLED'>) => boolean
  /** Its routes as `METHOD /path`; a path ending in `/*` stands for everything under it. */
  routes: string[]
}

/**
 * The features that are off unless configured, and their routes (the route files return early
 * without their setting). test/docs.test.ts holds this list to the routes the app registers
 * with every feature on and with every one off, so a new feature's routes cannot be missing
 * here. The admin API's password-reset route is not listed: the admin API answers everyone but
 * an operator as a path that does not exist (docs/operating-accounts.md).
 */
export const OPTIONAL_FEATURES: readonly Feature[] = [
  {
    name: 'the password reset',
    setting: 'APP_RESET_URL (the front end\'s reset page)',
    on: (config) => config.APP_RESET_URL !== undefined,
    routes: ['POST /api/auth/password/forgot', 'POST /api/auth/password/reset', 'POST /api/auth/password/reset/inspect']
  },
  {
    name: 'email verification',
    setting: 'EMAIL_VERIFICATION=optional or required, with APP_VERIFY_URL',
    on: (config) => config.EMAIL_VERIFICATION !== 'off',
    routes: ['POST /api/auth/email/verification', 'POST /api/auth/email/verify']
  },
  {
    name: 'the sign-in by a mailed code',
    setting: 'EMAIL_SIGN_IN=true',
    on: (config) => config.EMAIL_SIGN_IN,
    routes: ['POST /api/auth/email/sign-in', 'POST /api/auth/email/sign-in/verify']
  },
  {
    name: 'the metrics',
    setting: 'METRICS_TOKEN',
    on: (config) => config.METRICS_TOKEN !== undefined,
    routes: ['GET /metrics']
  },
  {
    name: 'the OpenAPI document and its UI',
    setting: 'DOCS_ENABLED=true (off by default in production)',
    on: (config) => config.DOCS_ENABLED,
    routes: ['GET /docs', 'GET /docs/*']
  }
]

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
export function offFeatureOf (config: Parameters<Feature['on']>[0], method: string, url: string): Feature | undefined {
  // As the router takes it: no query, a trailing slash or none (ignoreTrailingSlash).
  const path = (url.split('?')[0] ?? '').replace(/(.)\/$/, '$1')
  return OPTIONAL_FEATURES.find((feature) => !feature.on(config) && feature.routes.some((route) => serves(route, method, path)))
}
