import { Ajv2020 } from 'ajv/dist/2020.js'
import Fastify, { type FastifyInstance, type RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import t, { type Test } from 'tap'
import app, { serverOptions } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'
import { OPTIONAL_FEATURES, serves } from '../src/lib/feature-routes.ts'
import { ProblemSchema } from '../src/schemas.ts'
import { build, freshDatabase, postJson, register, SECRET_KEY, TestClock, uniqueUser } from './helper.ts'

// What a route answers follows from what it is; a new route that forgets a status fails here.
/** Every route: 400 without Host (plugins/security.ts), 503 while closing or past the deadline (plugins/errors.ts), 500. */
const EVERY_ROUTE = [400, 500, 503]
/** Credentials or a token checked in the body rather than by a security scheme. */
const CREDENTIALS_IN_BODY = new Set(['POST /api/auth/login', 'POST /api/token', 'POST /api/token/verify'])
/** The rate-limited routes (DESIGN.md); a route with `config.limits` counts too. */
const RATE_LIMITED = new Set([
  'POST /api/auth/register', 'POST /api/auth/login', 'POST /api/token', 'POST /api/token/refresh',
  'POST /api/token/verify', 'POST /api/token/blacklist', 'POST /api/token/introspect', 'POST /api/auth/password'
])
const CONFLICTS = new Set(['POST /api/auth/register'])
/** Fastify parses a body for these methods: too large is 413, not JSON is 415. */
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])
const METRICS_TOKEN = 'metrics-token-for-the-docs-test'
/** Every optional feature on (src/lib/feature-routes.ts): every route the app can have is listed. */
const EVERY_FEATURE = {
  METRICS_TOKEN,
  APP_RESET_URL: 'https://app.example.com/reset-password',
  EMAIL_VERIFICATION: 'optional',
  APP_VERIFY_URL: 'https://app.example.com/verify-email',
  EMAIL_SIGN_IN: 'true',
  // A provider is asked nothing until a sign-in starts: an address that answers nothing will do.
  OIDC_PROVIDERS: 'corp',
  OIDC_CORP_ISSUER: 'https://idp.example.com',
  OIDC_CORP_CLIENT_ID: 'authgate',
  OIDC_CORP_CLIENT_SECRET: 'authgate-secret-for-the-docs-test',
  OIDC_RETURN_URLS: 'https://app.example.com/signed-in',
  WEBAUTHN_RP_ID: 'example.com',
  DOCS_ENABLED: 'true'
}
/** Every optional feature off. */
const NO_FEATURE = { DOCS_ENABLED: 'false' }

const pkg = JSON.parse(await readFile(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string }
const problemSchema = JSON.parse(JSON.stringify(ProblemSchema)) as unknown

interface Collected { app: FastifyInstance, routes: RouteOptions[], cookieNames: { access: string, refresh: string } }

/**
 * The app as test/helper.ts's build makes it (the same server options and test defaults), with
 * an onRoute hook added first: the helper's app is ready before a test could add one.
 */
async function buildCollectingRoutes (t: Test, env: Record<string, string> = EVERY_FEATURE): Promise<Collected> {
  const config = await loadConfig({
    NODE_ENV: 'test',
    SECRET_KEY,
    BCRYPT_COST: '4',
    RATE_LIMIT_ENABLED: 'false',
    LOG_LEVEL: 'silent',
    ...env,
    ...await freshDatabase(t)
  })
  const fastify = Fastify(serverOptions(config))
  t.teardown(() => fastify.close())
  const routes: RouteOptions[] = []
  fastify.addHook('onRoute', (route) => { routes.push(route) })
  await fastify.register(fp(app), { config, clock: new TestClock() })
  await fastify.ready()
  return { app: fastify, routes, cookieNames: config.cookieNames }
}

type Json = Record<string, any>

/** The OpenAPI path of a Fastify URL: `/sessions/:id` -> `/sessions/{id}`, one form for `/x` and `/x/`. */
const openapiPath = (url: string): string => (url.length > 1 ? url.replace(/\/$/, '') : url).replace(/:([A-Za-z0-9_]+)/g, '{$1}')

function resolveRef (document: Json, ref: string): unknown {
  if (!ref.startsWith('#/')) return undefined
  return ref.slice(2).split('/').reduce<any>((node, key) => node?.[key.replaceAll('~1', '/').replaceAll('~0', '~')], document)
}

function * refsIn (node: unknown): Generator<string> {
  if (Array.isArray(node)) for (const item of node) yield * refsIn(item)
  else if (typeof node === 'object' && node !== null) {
    for (const [key, value] of Object.entries(node)) {
      if (key === '$ref' && typeof value === 'string') yield value
      else yield * refsIn(value)
    }
  }
}

t.test('the OpenAPI document lists every route once, with every status it answers', async (t) => {
  const { app, routes, cookieNames } = await buildCollectingRoutes(t)
  const res = await app.inject('/docs/json')
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  const doc = res.json() as Json

  t.test('an OpenAPI 3.1 document', async (t) => {
    t.equal(doc.openapi, '3.1.0')
    t.match(doc.info, { title: 'authgate', version: pkg.version, description: String })
    t.notOk('servers' in doc, 'no servers without PUBLIC_URL: the UI calls the origin it was loaded from')
    t.type(doc.paths, 'object')
    for (const ref of refsIn(doc)) t.not(resolveRef(doc, ref), undefined, `${ref} resolves`)
    // Every schema in it is a valid JSON Schema 2020-12, OpenAPI 3.1's dialect.
    const ajv = new Ajv2020({ strict: false })
    for (const [name, schema] of Object.entries(doc.components.schemas as Json)) {
      t.ok(ajv.validateSchema(schema), `components.schemas.${name} is JSON Schema 2020-12`)
    }
    const declaredTags = new Set((doc.tags as Array<{ name: string }>).map((tag) => tag.name))
    for (const [path, item] of Object.entries(doc.paths as Json)) {
      t.ok(path.startsWith('/'), `${path} starts with /`)
      for (const [method, operation] of Object.entries(item as Json)) {
        t.ok(operation.summary, `${method} ${path} has a summary`)
        t.ok(operation.tags?.length > 0 && operation.tags.every((tag: string) => declaredTags.has(tag)), `${method} ${path} has declared tags`)
        t.ok(Object.keys(operation.responses ?? {}).length > 0, `${method} ${path} has responses`)
        for (const [status, response] of Object.entries(operation.responses as Json)) {
          t.match(status, /^[1-5]\d\d$/)
          t.type(response.description, 'string')
          for (const media of Object.values(response.content ?? {}) as Json[]) {
            t.ok(ajv.validateSchema(media.schema), `${method} ${path} ${status} has a valid schema`)
          }
        }
        for (const media of Object.values(operation.requestBody?.content ?? {}) as Json[]) {
          t.ok(ajv.validateSchema(media.schema), `${method} ${path}'s body has a valid schema`)
        }
      }
    }
  })

  t.test('the token endpoint lists its grants and the parameters of token exchange and the JWT bearer grant', async (t) => {
    const body = doc.paths['/oauth/token'].post.requestBody.content['application/x-www-form-urlencoded'].schema as Json
    t.same(body.properties.grant_type.examples, [
      'client_credentials', 'refresh_token', 'urn:ietf:params:oauth:grant-type:token-exchange', 'urn:ietf:params:oauth:grant-type:jwt-bearer'
    ])
    for (const name of ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'audience', 'resource', 'assertion']) {
      t.ok(name in body.properties, `${name} is a parameter`)
    }
  })

  t.test('the security schemes: bearer, the cookies by their configured names, basic', async (t) => {
    const schemes = doc.components.securitySchemes as Json
    t.match(schemes.bearer, { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' })
    t.match(schemes.cookie, { type: 'apiKey', in: 'cookie', name: cookieNames.access })
    t.match(schemes.refreshCookie, { type: 'apiKey', in: 'cookie', name: cookieNames.refresh })
    t.match(schemes.basic, { type: 'http', scheme: 'basic' })
    const referenced = new Set<string>()
    for (const item of Object.values(doc.paths as Json)) {
      for (const operation of Object.values(item as Json)) {
        for (const requirement of operation.security ?? []) {
          for (const name of Object.keys(requirement)) {
            t.ok(name in schemes, `security scheme ${name} is declared`)
            referenced.add(name)
          }
        }
      }
    }
    for (const name of ['bearer', 'cookie', 'refreshCookie', 'basic']) t.ok(referenced.has(name), `${name} is used by a route`)
    const blacklist = doc.paths['/api/token/blacklist'].post
    t.same(blacklist.security, [{ refreshCookie: [] }, {}], 'the refresh cookie, or the token in the body')
    t.same(doc.paths['/api/token/introspect'].post.security, [{ basic: [] }, {}], 'HTTP Basic, or the client\'s credentials in the body')
  })

  t.test('the Problem schema is the one error shape', async (t) => {
    t.same(doc.components.schemas.Problem, problemSchema)
  })

  const listed = routes.filter((route) => {
    const methods = [route.method].flat()
    return !methods.includes('HEAD') && !route.url.startsWith('/docs')
  })
  t.ok(listed.length >= 17, `the app has its routes (${listed.length})`)

  const seen = new Map<string, number>()
  for (const route of listed) {
    const path = openapiPath(route.url)
    for (const method of [route.method].flat()) {
      const key = `${method} ${path}`
      seen.set(key, (seen.get(key) ?? 0) + 1)
      // Fastify may add a route for /x/ beside /x (ignoreTrailingSlash, prefixes): one operation.
      if (seen.get(key)! > 1) continue
      t.test(key, async (t) => {
        const operation = doc.paths[path]?.[method.toLowerCase()] as Json | undefined
        if (operation === undefined) {
          t.fail(`${key} is in the document`)
          return
        }
        const statuses = new Set(Object.keys(operation.responses).map(Number))
        t.ok([...statuses].some((status) => status >= 200 && status < 400), 'a success response')

        const security: Array<Record<string, string[]>> = (route.schema as Json | undefined)?.security ?? []
        const authenticates = [route.onRequest ?? []].flat().includes(app.authenticate)
        if (authenticates) t.same(security, [{ bearer: [] }, { cookie: [] }], 'an access-token route names both its schemes')
        const expected = new Set(EVERY_ROUTE)
        if (BODY_METHODS.has(method)) { expected.add(413); expected.add(415) }
        if (authenticates || security.some((requirement) => Object.keys(requirement).length > 0) || CREDENTIALS_IN_BODY.has(key)) expected.add(401)
        if (/\{[^}]+\}/.test(path)) expected.add(404)
        if (CONFLICTS.has(key)) expected.add(409)
        if (RATE_LIMITED.has(key) || (route.config as Json | undefined)?.limits !== undefined) expected.add(429)
        for (const status of expected) t.ok(statuses.has(status), `answers ${status}`)

        // OAuth endpoints answer RFC 6749 §5.2 errors, which OAuth clients read.
        const [mediaType, ref] = (route.config as Json | undefined)?.oauth === true
          ? ['application/json', '#/components/schemas/OAuthError']
          : ['application/problem+json', '#/components/schemas/Problem']
        for (const [status, response] of Object.entries(operation.responses as Json)) {
          if (Number(status) < 400) continue
          t.same(Object.keys(response.content ?? {}), [mediaType], `${status} is ${mediaType}`)
          t.same(response.content?.[mediaType]?.schema, { $ref: ref }, `${status} has the ${ref.split('/').at(-1)} schema`)
          if (status === '401') t.ok(response.headers?.['www-authenticate'], '401 names WWW-Authenticate')
          if (status === '429') t.ok(response.headers?.['retry-after'], '429 names Retry-After')
        }
        if (route.schema?.body !== undefined) t.ok(operation.requestBody?.content?.['application/json'], 'a JSON request body')
      })
    }
  }

  t.test('the document lists nothing else, each path once', async (t) => {
    const operations = Object.entries(doc.paths as Json).flatMap(([path, item]) => Object.keys(item as Json).map((method) => `${method.toUpperCase()} ${path}`))
    t.same(operations.sort(), [...seen.keys()].sort())
    t.notOk(Object.keys(doc.paths as Json).some((path) => path.startsWith('/docs')), 'the docs routes are hidden')
    t.notOk(Object.keys(doc.paths as Json).some((path) => path.length > 1 && path.endsWith('/')), 'no trailing-slash duplicates')
  })
})

t.test('the UI at /docs loads, same origin, under its own CSP; the API keeps its own', async (t) => {
  const fastify = await build(t, { env: { COOKIE_SECURE: 'false', PUBLIC_URL: 'https://auth.example.com/' } })

  t.test('the page and every asset it names load', async (t) => {
    for (const page of ['/docs', '/docs/']) {
      const res = await fastify.inject(page)
      t.equal(res.statusCode, 200, page)
      t.match(res.headers['content-type'], /^text\/html/)
      const assets = [...res.body.matchAll(/(?:src|href)="([^"]+)"/g)].map((match) => new URL(match[1]!, `http://localhost${page}`).pathname)
      t.ok(assets.some((asset) => asset.endsWith('/swagger-ui-bundle.js')), 'the bundle')
      t.ok(assets.some((asset) => asset.endsWith('/swagger-initializer.js')), 'the initializer')
      for (const asset of assets) {
        t.ok(asset.startsWith('/docs/static/'), `${asset} is served here`)
        const loaded = await fastify.inject(asset)
        t.equal(loaded.statusCode, 200, asset)
        t.ok(Number(loaded.headers['content-length'] ?? loaded.rawPayload.length) > 0, `${asset} is not empty`)
      }
    }
    const initializer = await fastify.inject('/docs/static/swagger-initializer.js')
    t.match(initializer.headers['content-type'], /javascript/)
    t.match(initializer.body, "resolveUrl('./json')", 'the document from this origin')
    t.notMatch(initializer.body, /\burls?"?\s*:\s*["'`[]/, 'no other document named')
  })

  t.test('the document names PUBLIC_URL and the cookie names of this configuration', async (t) => {
    const doc = (await fastify.inject('/docs/json')).json() as Json
    t.same(doc.servers, [{ url: 'https://auth.example.com' }])
    t.equal(doc.components.securitySchemes.cookie.name, 'access_token')
    t.equal(doc.components.securitySchemes.refreshCookie.name, 'refresh_token')
  })

  t.test('"Try it out" on login sends what the document says and signs in', async (t) => {
    const doc = (await fastify.inject('/docs/json')).json() as Json
    const body = doc.paths['/api/auth/login'].post.requestBody
    t.same(Object.keys(body.content), ['application/json'])
    t.same([...body.content['application/json'].schema.required].sort(), ['identifier', 'password'])
    const user = await register(fastify)
    // As Swagger UI sends it: JSON, Accept from the response's media type, to the same origin.
    const res = await postJson(fastify, '/api/auth/login', { identifier: user.username, password: user.password }, { accept: 'application/json' })
    t.equal(res.statusCode, 200)
    t.match(res.json(), { access: String, refresh: String })
  })

  const directives = (header: unknown): Map<string, string[]> => new Map(String(header).split(';').map((part) => part.trim()).filter(Boolean)
    .map((part) => { const [name, ...values] = part.split(/\s+/); return [name!, values] }))

  t.test('the UI\'s policy lets its files and same-origin requests run, no inline script, nothing foreign', async (t) => {
    for (const url of ['/docs', '/docs/static/swagger-ui-bundle.js', '/docs/json']) {
      const res = await fastify.inject(url)
      const policy = directives(res.headers['content-security-policy'])
      t.same(policy.get('default-src'), ["'none'"], url)
      t.same(policy.get('script-src'), ["'self'"])
      // Swagger UI sets style attributes as it renders (seen in Chromium: test/browser.test.ts).
      t.same(policy.get('style-src'), ["'self'", "'unsafe-inline'"])
      t.same(policy.get('connect-src'), ["'self'", 'https://auth.example.com'])
      t.same(policy.get('img-src'), ["'self'", 'data:'])
      t.same(policy.get('frame-ancestors'), ["'none'"])
      t.notMatch(String(res.headers['content-security-policy']).replace("style-src 'self' 'unsafe-inline'", ''), /unsafe/)
    }
  })

  t.test('the API\'s policy stays default-src \'none\'', async (t) => {
    const api = "default-src 'none';frame-ancestors 'none'"
    for (const res of [
      await fastify.inject('/health/live'),
      await fastify.inject('/api/detail'),
      await postJson(fastify, '/api/auth/login', { identifier: 'nobody', password: 'wrong password' }),
      await fastify.inject('/.well-known/jwks.json'),
      await fastify.inject('/no/such/route')
    ]) {
      t.equal(res.headers['content-security-policy'], api, `${res.statusCode} ${res.raw.req.url}`)
    }
    t.not((await fastify.inject('/docs')).headers['content-security-policy'], api)
  })

  t.test('a missing asset is a problem, not a page', async (t) => {
    const res = await fastify.inject('/docs/static/no-such-file.js')
    t.equal(res.statusCode, 404)
    t.match(res.headers['content-type'], /^application\/problem\+json/)
  })
})

t.test('the problem schema the document shows is what errors look like', async (t) => {
  const fastify = await build(t)
  const res = await postJson(fastify, '/api/auth/register', { username: 'x' })
  t.equal(res.statusCode, 400)
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  const ajv = new Ajv2020({ strict: false })
  const validate = ajv.compile(problemSchema as object)
  t.ok(validate(res.json()), JSON.stringify(validate.errors))
  t.ok(isDeepStrictEqual(Object.keys(res.json()).sort(), ['code', 'detail', 'errors', 'status', 'title', 'type']))
})

t.test('DOCS_ENABLED=false (the default in production): no document, no UI', async (t) => {
  const fastify = await build(t, { env: { DOCS_ENABLED: 'false' } })
  for (const url of ['/docs', '/docs/json', '/docs/static/index.html']) {
    const res = await fastify.inject({ url })
    t.equal(res.statusCode, 404, url)
    t.match(res.json(), { code: 'not_found' })
  }
  t.equal((await postJson(fastify, '/api/auth/register', uniqueUser())).statusCode, 201, 'the API serves on')
})

/** `METHOD url` of each route, HEAD (Fastify's twin of a GET) and trailing-slash twins left out. */
const routeKeys = (routes: RouteOptions[]): Set<string> => new Set(routes.flatMap((route) =>
  [route.method].flat().filter((method) => method !== 'HEAD').map((method) => `${method} ${route.url.length > 1 ? route.url.replace(/\/$/, '') : route.url}`)))

t.test('the optional features\' routes are exactly those the app adds when each is on (src/lib/feature-routes.ts)', async (t) => {
  const on = routeKeys((await buildCollectingRoutes(t, EVERY_FEATURE)).routes)
  const off = routeKeys((await buildCollectingRoutes(t, NO_FEATURE)).routes)
  t.same([...off].filter((key) => !on.has(key)), [], 'no route only when a feature is off')
  // The admin API answers everyone but an operator as a path that does not exist: no hint there.
  const added = [...on].filter((key) => !off.has(key) && !key.includes(' /api/admin/'))
  const listed = OPTIONAL_FEATURES.flatMap((feature) => feature.routes)
  for (const key of added) {
    const [method = '', url = ''] = key.split(' ')
    t.ok(listed.some((route) => serves(route, method, url)), `${key} is listed with its feature`)
  }
  for (const route of listed) {
    t.ok(added.some((key) => serves(route, ...(key.split(' ') as [string, string]))), `${route} is a route of its feature`)
  }
})

t.test('a route of a feature that is off answers 404 naming the setting that turns it on, and nothing of features that are on', async (t) => {
  const off = await build(t, { env: NO_FEATURE })
  for (const feature of OPTIONAL_FEATURES) {
    for (const route of feature.routes) {
      const [method, path = ''] = route.split(' ') as ['GET' | 'POST', string]
      const url = path.replace(/\/\*$/, '/json')
      const res = await off.inject({ method, url: `${url}/?x=1`, ...(method === 'POST' ? { payload: {} } : {}) })
      t.equal(res.statusCode, 404, `${method} ${url}/?x=1`)
      t.match(res.headers['content-type'], /^application\/problem\+json/)
      const detail = `No route for ${method} ${url}/: ${feature.name} is off; ${feature.setting} turns it on.`
      t.same(res.json(), { type: 'about:blank', title: 'Not Found', status: 404, detail, code: 'not_found' }, 'problem+json naming the setting')
    }
  }
  t.match((await off.inject({ url: '/no/such/route' })).json(), { status: 404, code: 'not_found', detail: 'No route for GET /no/such/route.' }, 'another path: no setting named')

  const on = await build(t, { env: EVERY_FEATURE })
  for (const url of ['/api/auth/password/forgot', '/api/auth/email/sign-in', '/metrics/nothing', '/no/such/route']) {
    const res = await on.inject({ method: 'DELETE', url })
    t.equal(res.statusCode, 404, `DELETE ${url}`)
    t.equal(res.json().detail, `No route for DELETE ${url}.`, 'with every feature on, a 404 names no setting')
  }
})
