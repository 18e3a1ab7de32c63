import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { byCookie } from '#src/http/by-cookie.ts'
import { callerOf } from '#src/http/caller.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { AccessTokenSecurity, problems, RecoveryCodesSchema, TokenPairSchema, UuidParamsSchema } from '#src/schemas.ts'

/** A new authenticator app verified by its first code (docs/mfa.md). */
const verifyTotp: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config } = fastify
  fastify.post('/:id/verify', {
    onRequest: [fastify.authenticate],
    // Every code guessed counts per address, and per account with the account's sign-ins.
    config: { limits: credentialLimits(config, async (request) => `user:${request.user.id}`) },
    schema: {
      tags: ['mfa'],
      summary: 'Verify a new authenticator app by its code: the session becomes aal2 (a new pair); the first factor brings 10 recovery codes',
      security: AccessTokenSecurity,
      params: UuidParamsSchema,
      body: Type.Object({ code: Type.String({ pattern: '^[0-9]{6}$', description: 'the 6-digit code the authenticator app shows' }) }, { additionalProperties: false }),
      response: {
        200: Type.Object({ ...TokenPairSchema.properties, recovery_codes: Type.Optional(RecoveryCodesSchema) }),
        ...problems(400, 401, 404, 413, 415, 429, 503)
      }
    }
  }, async (request, reply) => {
    const { pair, recoveryCodes } = await fastify.mfa.verifyEnrollment(request.user, request.claims!, request.params.id, request.body.code, callerOf(request))
    if (byCookie(request)) reply.setAuthCookies(pair)
    return { ...pair, ...(recoveryCodes === undefined ? {} : { recovery_codes: recoveryCodes }) }
  })
}

export default verifyTotp
