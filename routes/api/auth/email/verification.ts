import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { perIp, perKey } from '#src/http/limits.ts'
import { EmailSchema, problems } from '#src/schemas.ts'

/** POST /api/auth/email/verification (docs/email.md): a new verification mail; the same 202 for every address. */
const verification: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/verification', {
    config: { limits: [perIp('mail', fastify.config.RATE_LIMIT_MAIL_MAX), perKey('mail-everyone', fastify.config.RATE_LIMIT_MAIL_GLOBAL_MAX, async () => 'everyone')] },
    schema: {
      tags: ['account'],
      summary: 'Ask for a new verification mail: 202 whether the address has an account (not yet verified) or not',
      body: Type.Object({ email: EmailSchema }, { additionalProperties: false }),
      response: { 202: Type.Object({}, { additionalProperties: false }), ...problems(400, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    await fastify.emailVerification.resend(request.body.email, callerOf(request))
    return reply.code(202).send({})
  })
}

export default verification
