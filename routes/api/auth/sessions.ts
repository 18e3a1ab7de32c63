import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { AccessTokenSecurity, problems, UuidParamsSchema } from '#src/schemas.ts'

const SessionSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  created_at: Type.String({ format: 'date-time' }),
  last_seen_at: Type.String({ format: 'date-time' }),
  user_agent: Type.Union([Type.String(), Type.Null()]),
  ip: Type.Union([Type.String(), Type.Null()]),
  current: Type.Boolean()
})

// The signed-in user's devices: GET lists them, DELETE signs one out.
const sessions: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/sessions', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['account'],
      summary: 'The signed-in user\'s active sessions, the newest first',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ sessions: Type.Array(SessionSchema) }), ...problems(400, 401, 503) }
    }
  }, async (request) => {
    const list = await fastify.sessions.list(request.user.id)
    return {
      sessions: list.map((s) => ({
        ...s,
        created_at: s.created_at.toISOString(),
        last_seen_at: s.last_seen_at.toISOString(),
        current: s.id === request.user.sessionId
      }))
    }
  })

  fastify.delete('/sessions/:id', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['account'],
      summary: 'End one of the signed-in user\'s sessions (sign out another device)',
      security: AccessTokenSecurity,
      params: UuidParamsSchema,
      response: { 204: Type.Null(), ...problems(400, 401, 404, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await fastify.sessions.end(request.user, request.params.id, callerOf(request))
    return reply.code(204).send(null)
  })
}

export default sessions
