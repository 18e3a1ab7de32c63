import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { AccessTokenSecurity, problems, RecoveryCodesSchema } from '#src/schemas.ts'

/** The signed-in user's recovery codes (docs/mfa.md): GET counts those left, POST replaces them. */
const recoveryCodes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { mfa } = fastify

  fastify.get('/recovery-codes', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'How many recovery codes are left',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ remaining: Type.Integer() }), ...problems(400, 401, 503) }
    }
  }, async (request) => ({ remaining: await mfa.recoveryCodesLeft(request.user.id) }))

  fastify.post('/recovery-codes', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'Ten new recovery codes, the old ones dead (an aal2 session signed in or stepped up within 10 minutes)',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ recovery_codes: RecoveryCodesSchema }), ...problems(400, 401, 403, 413, 415, 503) }
    }
  }, async (request) => ({ recovery_codes: await mfa.regenerateRecoveryCodes(request.user.id, request.claims!, callerOf(request)) }))
}

export default recoveryCodes
