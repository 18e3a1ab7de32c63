import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { DatabaseUnavailableError } from '#src/errors.ts'
import { callerOf } from '#src/http/caller.ts'
import { mailedProofOf } from '#src/http/mailed-proof.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { AccessTokenSecurity, MailedProofFieldsSchema, PasswordSchema, problems } from '#src/schemas.ts'

/** POST /api/auth/email/verify (docs/email.md): the verification mail's link token, or its address and code. */
const verify: FastifyPluginAsyncTypebox = async (fastify) => {
  // The user of the request's live session, if it has one (the browser that registered sends its
  // cookies): shown to hold the account. Any other token, or none, shows nothing, and is no error.
  async function sessionUserOf (request: FastifyRequest, reply: FastifyReply): Promise<number | undefined> {
    if (request.headers.authorization === undefined && request.cookies[fastify.config.cookieNames.access] === undefined) return undefined
    try {
      return (await fastify.sessions.userOf(await fastify.verifyAccessToken(request, reply)))?.id
    } catch (error) {
      if (error instanceof DatabaseUnavailableError) throw error
      return undefined
    }
  }

  fastify.post('/verify', {
    config: { limits: credentialLimits(fastify.config) },
    schema: {
      tags: ['account'],
      summary: 'Verify an address with the verification mail\'s token, or its address and code; a session of the account, or its password, shows that whoever verifies holds it too',
      description: 'The first proof of an account\'s address by someone who does not show they hold the account (no session of it, no password) removes its password, sessions and second factors: they may be a squatter\'s (docs/email.md).',
      security: [...AccessTokenSecurity, {}],
      body: Type.Object({
        ...MailedProofFieldsSchema.properties,
        password: Type.Optional({ ...PasswordSchema, description: 'the account\'s password: whoever verifies holds the account, and it stays as it is' })
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({
          email_verified: Type.Literal(true),
          password_removed: Type.Optional(Type.Literal(true, { description: 'the account\'s password no longer works (set one with the password reset), and its sessions ended' }))
        }, { additionalProperties: false }),
        ...problems(400, 401, 413, 415, 429, 503)
      }
    }
  }, async (request, reply) => {
    const { token, email, code, password } = request.body
    const proof = mailedProofOf({ token, email, code })
    const holder = { userId: await sessionUserOf(request, reply), password }
    const { passwordRemoved } = await fastify.emailVerification.verify(proof, callerOf(request), holder)
    return { email_verified: true as const, ...(passwordRemoved ? { password_removed: true as const } : {}) }
  })
}

export default verify
