import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { mailLimits } from '#src/http/limits.ts'
import { EmailSchema, EmptySchema, problems } from '#src/schemas.ts'

/** POST /api/auth/email/verification (docs/email.md): a new verification mail; the same 202 for every address. */
const verification: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/verification', {
    config: { limits: mailLimits(fastify.config) },
    schema: {
      tags: ['account'],
      summary: 'Ask for a new verification mail: 202 whether the address has an account (not yet verified) or not',
      body: Type.Object({ email: EmailSchema }, { additionalProperties: false }),
      response: { 202: EmptySchema, ...problems(400, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    await fastify.emailVerification.resend(request.body.email, callerOf(request))
    return reply.code(202).send({})
  })
}

export default verification
