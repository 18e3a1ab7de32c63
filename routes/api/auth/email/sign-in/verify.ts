import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { EmailSchema, MailCodeSchema, problems, SignInAnswerSchema } from '#src/schemas.ts'

/** POST /api/auth/email/sign-in/verify (docs/email.md): the mailed code for a token pair and the cookies, as login gives them. */
const verify: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/verify', {
    config: { limits: credentialLimits(fastify.config) },
    schema: {
      tags: ['auth'],
      summary: 'Sign in with the code mailed to the address; sets the access and refresh cookies',
      body: Type.Object({ email: EmailSchema, code: MailCodeSchema }, { additionalProperties: false }),
      response: { 200: SignInAnswerSchema, ...problems(400, 403, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    return reply.sendSignIn(await fastify.signIn.emailCode(request.body.email, request.body.code, callerOf(request)), { cookies: true })
  })
}

export default verify
