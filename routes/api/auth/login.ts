import { Type, type FastifyPluginAsyncTypebox, type Static } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { normalizeFields } from '#src/http/normalize-fields.ts'
import { IdentifierSchema, PasswordSchema, problems, SignInAnswerSchema } from '#src/schemas.ts'
import { credentialLimits } from '#src/http/limits.ts'

export const LoginBodySchema = Type.Object({
  identifier: IdentifierSchema,
  password: PasswordSchema
}, { additionalProperties: false })

const login: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/login', {
    preValidation: normalizeFields('identifier'),
    config: {
      limits: credentialLimits(fastify.config, (request) => fastify.accounts.limitKey((request.body as Static<typeof LoginBodySchema>).identifier))
    },
    schema: {
      tags: ['auth'],
      summary: 'Sign in with username or email; sets the access and refresh cookies',
      body: LoginBodySchema,
      response: { 200: SignInAnswerSchema, ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const step = await fastify.signIn.password(request.body.identifier, request.body.password, callerOf(request), { cookies: true })
    return reply.sendSignIn(step, { cookies: true })
  })
}

export default login
