import { Type, type FastifyPluginAsyncTypebox, type Static } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { normalizeFields } from '#src/http/normalize-fields.ts'
import { IdentifierSchema, PasswordSchema, problems, SignInAnswerSchema } from '#src/schemas.ts'
import { credentialLimits } from '#src/http/limits.ts'

export const ObtainBodySchema = Type.Object({
  // simplejwt's field name; an email is accepted too.
  username: IdentifierSchema,
  password: PasswordSchema
}, { additionalProperties: false })

// simplejwt's TokenObtainPairView: tokens in the body only, no cookies (machine clients).
const obtain: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    preValidation: normalizeFields('username'),
    config: {
      limits: credentialLimits(fastify.config, (request) => fastify.accounts.limitKey((request.body as Static<typeof ObtainBodySchema>).username))
    },
    schema: {
      tags: ['token'],
      summary: 'Obtain an access and refresh token pair',
      body: ObtainBodySchema,
      response: { 200: SignInAnswerSchema, ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => reply.sendSignIn(await fastify.signIn.password(request.body.username, request.body.password, callerOf(request), { cookies: false }), { cookies: false }))
}

export default obtain
