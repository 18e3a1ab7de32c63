import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { mailLimits } from '#src/http/limits.ts'
import { EmailSchema, EmptySchema, problems } from '#src/schemas.ts'

/** POST /api/auth/password/forgot (docs/email.md): the reset mail, queued; the same 202 for every address. */
const forgot: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/forgot', {
    // Per client IP, and one count for everyone: a 429 from either says nothing about an account.
    config: { limits: mailLimits(fastify.config) },
    schema: {
      tags: ['account'],
      summary: 'Ask for a password reset mail: 202 whether the address has an account or not; the mail is sent off the request path',
      body: Type.Object({ email: EmailSchema }, { additionalProperties: false }),
      response: { 202: EmptySchema, ...problems(400, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    await fastify.passwordReset.forgot(request.body.email, callerOf(request))
    return reply.code(202).send({})
  })
}

export default forgot
