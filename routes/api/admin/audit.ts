import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { operatorOf } from '#src/http/caller.ts'
import { adminSecurity, PageQuerySchema, problems } from '#src/schemas.ts'
import { ADMIN_SCOPES } from '#src/services/oauth/clients.ts'

const Nullable = <T extends ReturnType<typeof Type.String>>(schema: T) => Type.Union([schema, Type.Null()])
const AuditEventSchema = Type.Object({
  id: Type.String(),
  at: Type.String({ format: 'date-time' }),
  event: Type.String(),
  outcome: Type.Union([Type.Literal('success'), Type.Literal('failure')]),
  user_id: Type.Union([Type.Integer(), Type.Null()]),
  session_id: Nullable(Type.String()),
  identifier: Nullable(Type.String()),
  ip: Nullable(Type.String()),
  user_agent: Nullable(Type.String()),
  detail: Type.Union([Type.Object({}, { additionalProperties: true }), Type.Null()])
})

/** The admin API's audit trail: newest first, for a user or an event if asked, in keyset pages. */
const audit: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/audit', {
    onRequest: fastify.requireAdmin(ADMIN_SCOPES.auditRead),
    schema: {
      tags: ['admin'],
      summary: 'The audit trail, newest first; keyset pages, stable while events are written',
      security: adminSecurity(ADMIN_SCOPES.auditRead),
      querystring: Type.Composite([PageQuerySchema, Type.Object({
        user_id: Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,9}$' })),
        event: Type.Optional(Type.String({ minLength: 1, maxLength: 64 }))
      })], { additionalProperties: false }),
      response: { 200: Type.Object({ events: Type.Array(AuditEventSchema), next_cursor: Type.Union([Type.String(), Type.Null()]) }), ...problems(400, 401, 403, 404, 503) }
    }
  }, async (request) => {
    const { user_id: userId, event, cursor, limit } = request.query
    const found = await fastify.admin.auditTrail({ ...(userId === undefined ? {} : { userId: Number(userId) }), event, cursor, limit: Number(limit ?? 50) }, operatorOf(request))
    return { events: found.items.map((e) => ({ ...e, at: e.at.toISOString() })), next_cursor: found.next_cursor }
  })
}

export default audit
