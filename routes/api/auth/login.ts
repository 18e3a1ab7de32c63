import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdentifierSchema, PasswordSchema, problems, TokenPairSchema } from '../../../src/schemas.ts'
import { startSession } from '../../../src/services/sessions.ts'
import { authenticateUser } from '../../../src/services/users.ts'

export const LoginBodySchema = Type.Object({
  identifier: IdentifierSchema,
  password: PasswordSchema
}, { additionalProperties: false })

const login: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/login', {
    schema: {
      tags: ['auth'],
      summary: 'Sign in with username or email; sets the access and refresh cookies',
      body: LoginBodySchema,
      response: { 200: TokenPairSchema, ...problems(400, 401, 413, 415, 503) }
    }
  }, async (request, reply) => {
    const { db, config, tokens } = fastify
    const user = await authenticateUser(db, request.body.identifier, request.body.password, config.BCRYPT_COST, tokens.now())
    const pair = await startSession(db, tokens, user.id, { userAgent: request.headers['user-agent'] ?? null, ip: request.ip })
    request.log.info({ userId: user.id }, 'login')
    return reply.setAuthCookies(pair).send(pair)
  })
}

export default login
