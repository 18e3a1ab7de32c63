import { Type, type FastifyPluginAsyncTypebox, type Static } from '@fastify/type-provider-typebox'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { InvalidCredentialsError } from '#src/errors.ts'
import { clientOf } from '#src/lib/client.ts'
import { normalizeFields } from '#src/lib/usernames.ts'
import { IdentifierSchema, PasswordSchema, problems, TokenPairSchema, type TokenPair } from '#src/schemas.ts'

export const LoginBodySchema = Type.Object({
  identifier: IdentifierSchema,
  password: PasswordSchema
}, { additionalProperties: false })

/** Signs in for login and /api/token alike; both outcomes go to the audit trail. */
export async function signIn (fastify: FastifyInstance, request: FastifyRequest, identifier: string, password: string): Promise<TokenPair> {
  try {
    const { user, sessionId, pair } = await fastify.accounts.login(identifier, password, clientOf(request))
    request.audit({ event: 'login', userId: user.id, sessionId })
    return pair
  } catch (error) {
    if (error instanceof InvalidCredentialsError) request.audit({ event: 'login', outcome: 'failure', identifier })
    throw error
  }
}

const login: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/login', {
    preValidation: normalizeFields('identifier'),
    config: { limits: { kind: 'credentials', account: (request) => fastify.accounts.limitKey((request.body as Static<typeof LoginBodySchema>).identifier) } },
    schema: {
      tags: ['auth'],
      summary: 'Sign in with username or email; sets the access and refresh cookies',
      body: LoginBodySchema,
      response: { 200: TokenPairSchema, ...problems(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const pair = await signIn(fastify, request, request.body.identifier, request.body.password)
    return reply.setAuthCookies(pair).send(pair)
  })
}

export default login
