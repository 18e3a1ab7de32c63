import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { EmailSchema, PasswordSchema, problems, UsernameSchema, UserSchema } from '../../../src/schemas.ts'
import { registerUser } from '../../../src/services/users.ts'

export const RegisterBodySchema = Type.Object({
  username: UsernameSchema,
  email: EmailSchema,
  password: PasswordSchema
}, { additionalProperties: false })

const register: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/register', {
    schema: {
      tags: ['auth'],
      summary: 'Create an account',
      body: RegisterBodySchema,
      response: {
        201: Type.Object({ message: Type.String(), user: UserSchema }),
        ...problems(400, 409, 413, 415, 503)
      }
    }
  }, async (request, reply) => {
    const user = await registerUser(fastify.db, request.body, fastify.config.BCRYPT_COST)
    request.log.info({ userId: user.id }, 'user registered')
    return reply.code(201).send({ message: 'User registered successfully', user })
  })
}

export default register
