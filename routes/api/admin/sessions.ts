import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { operatorOf } from '#src/http/caller.ts'
import { adminSecurity, problems, ReasonQuerySchema, UserIdParamsSchema } from '#src/schemas.ts'
import { ADMIN_SCOPES } from '#src/services/oauth/clients.ts'

const SessionSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  created_at: Type.String({ format: 'date-time' }),
  last_seen_at: Type.String({ format: 'date-time' }),
  user_agent: Type.Union([Type.String(), Type.Null()]),
  ip: Type.Union([Type.String(), Type.Null()])
})
/** The admin API's sessions of a user: list them, end one or all. */
const sessions: FastifyPluginAsyncTypebox = async (fastify) => {
  const { admin } = fastify
  const onRequest = fastify.requireAdmin(ADMIN_SCOPES.sessions)
  const security = adminSecurity(ADMIN_SCOPES.sessions)

  fastify.get('/users/:id/sessions', {
    onRequest,
    schema: {
      tags: ['admin'],
      summary: 'A user\'s open sessions, the newest first',
      security,
      params: UserIdParamsSchema,
      response: { 200: Type.Object({ sessions: Type.Array(SessionSchema) }), ...problems(400, 401, 403, 404, 503) }
    }
  }, async (request) => {
    const list = await admin.sessionsOf(Number(request.params.id), operatorOf(request))
    return { sessions: list.map((s) => ({ ...s, created_at: s.created_at.toISOString(), last_seen_at: s.last_seen_at.toISOString() })) }
  })

  fastify.delete('/users/:id/sessions', {
    onRequest,
    schema: {
      tags: ['admin'],
      summary: 'End every session of a user (their refresh tokens with them)',
      security,
      params: UserIdParamsSchema,
      querystring: ReasonQuerySchema,
      response: { 200: Type.Object({ ended: Type.Integer() }), ...problems(400, 401, 403, 404, 413, 415, 503) }
    }
  }, async (request) => ({ ended: await admin.endSessions(Number(request.params.id), { reason: request.query.reason }, operatorOf(request)) }))

  fastify.delete('/users/:id/sessions/:sid', {
    onRequest,
    schema: {
      tags: ['admin'],
      summary: 'End one session of a user; 404 unless it is one of theirs, open',
      security,
      params: Type.Composite([UserIdParamsSchema, Type.Object({ sid: Type.String({ pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' }) })]),
      querystring: ReasonQuerySchema,
      response: { 204: Type.Null(), ...problems(400, 401, 403, 404, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await admin.endSessions(Number(request.params.id), { sessionId: request.params.sid.toLowerCase(), reason: request.query.reason }, operatorOf(request))
    return reply.code(204).send(null)
  })
}

export default sessions
