import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import fp from 'fastify-plugin'
import { ADMIN_SCOPES } from '../src/services/oauth/clients.ts'
import type { FastifyInstance } from 'fastify'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { OAuthErrorSchema, PROBLEM_MEDIA_TYPE, ProblemSchema } from '../src/schemas.ts'

/** Where the UI lives; the document is at `${DOCS_PREFIX}/json`. */
export const DOCS_PREFIX = '/docs'

// The two error shapes once, in components, instead of inline in every error response.
const plain = (schema: unknown): Record<string, unknown> => JSON.parse(JSON.stringify(schema)) as Record<string, unknown>
const SHARED = [
  { mediaType: PROBLEM_MEDIA_TYPE, schema: plain(ProblemSchema), ref: '#/components/schemas/Problem' },
  { mediaType: 'application/json', schema: plain(OAuthErrorSchema), ref: '#/components/schemas/OAuthError' }
]

interface MediaType { schema?: unknown }
interface Operation { responses?: Record<string, { content?: Record<string, MediaType> }> }

/** Every error response whose schema is one of the error shapes refers to the one in components. */
function shareErrorSchemas (paths: Record<string, Record<string, Operation>>): void {
  for (const pathItem of Object.values(paths)) {
    for (const operation of Object.values(pathItem)) {
      for (const response of Object.values(operation.responses ?? {})) {
        for (const { mediaType, schema, ref } of SHARED) {
          const media = response.content?.[mediaType]
          if (media !== undefined && isDeepStrictEqual(media.schema, schema)) media.schema = { $ref: ref }
        }
      }
    }
  }
}

/**
 * The UI's own Content-Security-Policy, set on the /docs routes only: the API's stays
 * `default-src 'none'` (plugins/security.ts). Swagger UI's scripts and styles are files served
 * here (and it sets style attributes as it renders); its logo and icons are data: images; "Try it out" and the document are fetched from
 * this origin (or PUBLIC_URL's, which the document names as its server).
 */
function uiContentSecurityPolicy (publicUrl: string | undefined): Record<string, string[]> {
  const connect = ["'self'", ...(publicUrl === undefined ? [] : [new URL(publicUrl).origin])]
  return {
    'default-src': ["'none'"],
    'script-src': ["'self'"],
    // Swagger UI sets style attributes as it renders; scripts stay files of this origin.
    'style-src': ["'self'", "'unsafe-inline'"],
    'img-src': ["'self'", 'data:'],
    'font-src': ["'self'", 'data:'],
    'connect-src': [...new Set(connect)],
    'base-uri': ["'none'"],
    'form-action': ["'self'"],
    'frame-ancestors': ["'none'"]
  }
}

/**
 * OpenAPI 3.1 from the route schemas (https://github.com/fastify/fastify-swagger) at /docs/json,
 * and Swagger UI (https://github.com/fastify/fastify-swagger-ui) at /docs. Registered before the
 * routes, whose schemas it collects as they are added.
 */
async function docsPlugin (fastify: FastifyInstance): Promise<void> {
  const { config } = fastify
  // DOCS_ENABLED=false (the default in production): no document, no UI, no route under /docs.
  if (!config.features.docs) return
  const pkg = JSON.parse(await readFile(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string, description: string }

  await fastify.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'authgate',
        version: pkg.version,
        description: `${pkg.description}. Errors are RFC 9457 problem details (application/problem+json) with a stable \`code\`.`
      },
      ...(config.publicUrl === undefined ? {} : { servers: [{ url: config.publicUrl }] }),
      tags: [
        { name: 'auth', description: 'Register, sign in and out, forward-auth' },
        { name: 'account', description: 'The signed-in user and their sessions' },
        { name: 'mfa', description: 'Second factors: TOTP, recovery codes, the second step of a sign-in, step-up' },
        { name: 'passkeys', description: 'Passkeys (WebAuthn): register, sign in without a password, the second step of a sign-in' },
        { name: 'upstream', description: 'Sign-in with identity providers (OpenID Connect, Google, Microsoft, GitHub), linked identities' },
        { name: 'token', description: 'simplejwt-compatible token endpoints, introspection and keys' },
        { name: 'oauth', description: 'OAuth 2.0: the token endpoint (client credentials, refresh), revocation, metadata' },
        { name: 'admin', description: 'Operators: users, their sessions and roles, the audit trail (service clients with admin scopes)' },
        { name: 'health', description: 'Probes' },
        { name: 'operations', description: 'Metrics' }
      ],
      components: {
        schemas: { Problem: SHARED[0]!.schema, OAuthError: SHARED[1]!.schema },
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'An access token' },
          // The cookie names change with COOKIE_SECURE and COOKIE_DOMAIN (prefixes, RFC 6265bis §4.1.3).
          cookie: { type: 'apiKey', in: 'cookie', name: config.cookieNames.access, description: 'The access token cookie set by login' },
          refreshCookie: { type: 'apiKey', in: 'cookie', name: config.cookieNames.refresh, description: 'The refresh token cookie set by login (Path=/api/token)' },
          basic: { type: 'http', scheme: 'basic', description: 'A service client (npm run clients), or one of INTROSPECTION_CLIENTS: its id and secret, form-encoded (RFC 6749 §2.3.1)' },
          metricsToken: { type: 'http', scheme: 'bearer', description: 'METRICS_TOKEN' },
          adminClient: {
            type: 'oauth2',
            description: `A service client's token for the admin API's audience, ${config.adminAudience} (npm run clients -- create --audience ${config.adminAudience} --scope …)`,
            flows: {
              clientCredentials: {
                tokenUrl: '/oauth/token',
                scopes: {
                  [ADMIN_SCOPES.usersRead]: 'Find and read users',
                  [ADMIN_SCOPES.usersWrite]: 'Disable, enable and delete users, set their roles',
                  [ADMIN_SCOPES.sessions]: 'List and end users\' sessions',
                  [ADMIN_SCOPES.auditRead]: 'Read the audit trail'
                }
              }
            }
          }
        }
      }
    },
    transformObject: (document) => {
      if ('openapiObject' in document) shareErrorSchemas(document.openapiObject.paths as Record<string, Record<string, Operation>>)
      return 'openapiObject' in document ? document.openapiObject : document.swaggerObject
    }
  })

  await fastify.register(swaggerUi, {
    routePrefix: DOCS_PREFIX,
    staticCSP: uiContentSecurityPolicy(config.publicUrl),
    uiConfig: { deepLinking: true, tryItOutEnabled: false, displayRequestDuration: true },
    logLevel: 'warn'
  })
}

// After errors and security: the /docs routes take their error handler and headers.
export default fp(docsPlugin, { name: 'docs', dependencies: ['config', 'errors', 'security'] })
