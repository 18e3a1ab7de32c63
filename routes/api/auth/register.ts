import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { normalizeFields } from '#src/http/normalize-fields.ts'
import { EmailSchema, PasswordSchema, problems, UsernameSchema, UserSchema } from '#src/schemas.ts'
import { credentialLimits } from '#src/http/limits.ts'

export const RegisterBodySchema = Type.Object({
  username: UsernameSchema,
  email: EmailSchema,
  password: PasswordSchema
}, { additionalProperties: false, 'x-password-policy': { password: 'password', username: 'username', email: 'email' } })

const register: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/register', {
    // The schema judges the username as it will be stored.
    preValidation: normalizeFields('username'),
    config: { limits: credentialLimits(fastify.config) },
    schema: {
      tags: ['auth'],
      summary: 'Create an account',
      body: RegisterBodySchema,
      response: {
        201: Type.Object({ message: Type.String(), user: UserSchema }),
        ...problems(400, 409, 413, 415, 429, 503)
      }
    }
  }, async (request, reply) => {
    const user = await fastify.accounts.register(request.body, callerOf(request))
    await fastify.emailVerification.registered(user.id)
    return reply.code(201).send({ message: 'User registered successfully', user })
  })
}

export default register
