import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { mailLimits } from '#src/http/limits.ts'
import { EmailSchema, EmptySchema, problems } from '#src/schemas.ts'

/** POST /api/auth/email/sign-in (docs/email.md): a sign-in code by mail; the same 202 for every address. */
const signIn: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/sign-in', {
    config: { limits: mailLimits(fastify.config) },
    schema: {
      tags: ['auth'],
      summary: 'Ask for a sign-in code by mail: 202 whether the address has an account or not',
      body: Type.Object({ email: EmailSchema }, { additionalProperties: false }),
      response: { 202: EmptySchema, ...problems(400, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    await fastify.signIn.requestCode(request.body.email, callerOf(request))
    return reply.code(202).send({})
  })
}

export default signIn
