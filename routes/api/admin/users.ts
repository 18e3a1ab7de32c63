import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { operatorOf } from '#src/http/caller.ts'
import { adminSecurity, PageQuerySchema, problems, ReasonSchema, UserIdParamsSchema } from '#src/schemas.ts'
import type { AdminUser } from '#src/services/admin.ts'
import { ADMIN_SCOPES } from '#src/services/oauth/clients.ts'

const Timestamp = Type.Union([Type.String({ format: 'date-time' }), Type.Null()])
const AdminUserSchema = Type.Object({
  id: Type.Integer(),
  username: Type.String(),
  email: Type.String(),
  status: Type.Union([Type.Literal('active'), Type.Literal('disabled'), Type.Literal('deleted')]),
  roles: Type.Array(Type.String()),
  created_at: Type.String({ format: 'date-time' }),
  last_login_at: Timestamp,
  disabled_reason: Type.Union([Type.String(), Type.Null()]),
  disabled_until: Timestamp,
  deleted_at: Timestamp
})

const iso = (date: Date | null): string | null => date?.toISOString() ?? null
const shown = <U extends AdminUser>(user: U) => ({
  ...user,
  created_at: user.created_at.toISOString(),
  last_login_at: iso(user.last_login_at),
  disabled_until: iso(user.disabled_until),
  deleted_at: iso(user.deleted_at)
})

/** The admin API's users (docs/operating-accounts.md): find, read, disable, enable, delete, give roles, reset second factors (the reset mail: users/password-reset.ts). */
const users: FastifyPluginAsyncTypebox = async (fastify) => {
  const { admin } = fastify
  const read = { onRequest: fastify.requireAdmin(ADMIN_SCOPES.usersRead), security: adminSecurity(ADMIN_SCOPES.usersRead) }
  const write = { onRequest: fastify.requireAdmin(ADMIN_SCOPES.usersWrite), security: adminSecurity(ADMIN_SCOPES.usersWrite) }

  fastify.get('/users', {
    onRequest: read.onRequest,
    schema: {
      tags: ['admin'],
      summary: 'Find users: a prefix of the username or email, or an id; keyset pages, stable while users register',
      security: read.security,
      querystring: Type.Composite([PageQuerySchema, Type.Object({
        q: Type.Optional(Type.String({ minLength: 1, maxLength: 254 })),
        status: Type.Optional(Type.Union([Type.Literal('active'), Type.Literal('disabled'), Type.Literal('deleted')]))
      })], { additionalProperties: false }),
      response: { 200: Type.Object({ users: Type.Array(AdminUserSchema), next_cursor: Type.Union([Type.String(), Type.Null()]) }), ...problems(400, 401, 403, 404, 503) }
    }
  }, async (request) => {
    const { q, status, cursor, limit } = request.query
    const found = await admin.searchUsers({ q, status, cursor, limit: Number(limit ?? 50) }, operatorOf(request))
    return { users: found.items.map(shown), next_cursor: found.next_cursor }
  })

  fastify.get('/users/:id', {
    onRequest: read.onRequest,
    schema: {
      tags: ['admin'],
      summary: 'A user: status, roles, last sign-in, open sessions',
      security: read.security,
      params: UserIdParamsSchema,
      response: { 200: Type.Composite([AdminUserSchema, Type.Object({ active_sessions: Type.Integer() })]), ...problems(400, 401, 403, 404, 503) }
    }
  }, async (request) => shown(await admin.user(Number(request.params.id), operatorOf(request))))

  fastify.post('/users/:id/disable', {
    onRequest: write.onRequest,
    schema: {
      tags: ['admin'],
      summary: 'Disable a user and end every session and refresh token, in one transaction; until a time, if given',
      security: write.security,
      params: UserIdParamsSchema,
      body: Type.Object({ reason: ReasonSchema, until: Type.Optional(Type.String({ format: 'date-time' })) }, { additionalProperties: false }),
      response: { 200: AdminUserSchema, ...problems(400, 401, 403, 404, 409, 413, 415, 503) }
    }
  }, async (request) => {
    const { reason, until } = request.body
    return shown(await admin.disable(Number(request.params.id), { reason, ...(until === undefined ? {} : { until: new Date(until) }) }, operatorOf(request)))
  })

  fastify.post('/users/:id/enable', {
    onRequest: write.onRequest,
    schema: {
      tags: ['admin'],
      summary: 'Enable a disabled user (the sessions ended stay ended)',
      security: write.security,
      params: UserIdParamsSchema,
      body: Type.Object({ reason: ReasonSchema }, { additionalProperties: false }),
      response: { 200: AdminUserSchema, ...problems(400, 401, 403, 404, 409, 413, 415, 503) }
    }
  }, async (request) => shown(await admin.enable(Number(request.params.id), request.body, operatorOf(request))))

  fastify.delete('/users/:id', {
    onRequest: write.onRequest,
    schema: {
      tags: ['admin'],
      summary: 'Delete a user: soft (the default) scrubs the name, address and password and keeps the row for the audit trail; hard deletes it',
      security: write.security,
      params: UserIdParamsSchema,
      querystring: Type.Object({ mode: Type.Optional(Type.Union([Type.Literal('soft'), Type.Literal('hard')])), reason: ReasonSchema }, { additionalProperties: false }),
      response: { 204: Type.Null(), ...problems(400, 401, 403, 404, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await admin.remove(Number(request.params.id), { mode: request.query.mode ?? 'soft', reason: request.query.reason }, operatorOf(request))
    return reply.code(204).send(null)
  })

  fastify.put('/users/:id/roles', {
    onRequest: write.onRequest,
    schema: {
      tags: ['admin'],
      summary: 'Set a user\'s roles (of ROLES): at forward auth and introspection at once, in tokens from the next refresh',
      security: write.security,
      params: UserIdParamsSchema,
      body: Type.Object({ roles: Type.Array(Type.String({ minLength: 1, maxLength: 32 }), { maxItems: 64 }), reason: ReasonSchema }, { additionalProperties: false }),
      response: { 200: AdminUserSchema, ...problems(400, 401, 403, 404, 409, 413, 415, 503) }
    }
  }, async (request) => shown(await admin.setRoles(Number(request.params.id), request.body, operatorOf(request))))

  fastify.post('/users/:id/mfa/reset', {
    onRequest: write.onRequest,
    schema: {
      tags: ['admin'],
      summary: 'Remove every second factor and recovery code of a user (a lost phone), the lock lifted, their sessions ended (unless keep_sessions); the user is mailed a notice',
      security: write.security,
      params: UserIdParamsSchema,
      body: Type.Object({
        reason: ReasonSchema,
        keep_sessions: Type.Optional(Type.Boolean({ description: 'leave the user\'s sessions open (default false: whoever has the phone may hold one)' }))
      }, { additionalProperties: false }),
      response: { 200: Type.Object({ factors_removed: Type.Integer(), sessions_ended: Type.Integer() }), ...problems(400, 401, 403, 404, 409, 413, 415, 503) }
    }
  }, async (request) => {
    const removed = await admin.resetMfa(Number(request.params.id), request.body, operatorOf(request))
    return { factors_removed: removed.factors, sessions_ended: removed.sessions }
  })
}

export default users
