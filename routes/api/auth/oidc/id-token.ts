import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { problems, ProviderParamsSchema, SignInAnswerSchema } from '#src/schemas.ts'

const idToken: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/:provider/id-token', {
    config: { limits: credentialLimits(fastify.config) },
    schema: {
      tags: ['upstream'],
      summary: 'Sign in with an ID token a native app got from the provider\'s SDK; answers as /api/auth/login does',
      params: ProviderParamsSchema,
      body: Type.Object({
        id_token: Type.String({ minLength: 1, maxLength: 16384 }),
        nonce: Type.Optional(Type.String({ minLength: 1, maxLength: 512, description: 'The nonce the app asked the provider to put in the token: checked when given' }))
      }, { additionalProperties: false }),
      response: { 200: SignInAnswerSchema, ...problems(400, 401, 403, 404, 409, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const step = await fastify.upstream.idToken(request.params.provider, request.body.id_token, request.body.nonce, callerOf(request))
    return reply.sendSignIn(step, { cookies: true })
  })
}

export default idToken
