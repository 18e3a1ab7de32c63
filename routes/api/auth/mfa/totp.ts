import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { AccessTokenSecurity, problems } from '#src/schemas.ts'

/** Adding an authenticator app (docs/mfa.md): its secret, verified by its first code (totp/verify.ts). */
const totp: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/totp', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'Start adding an authenticator app (a sign-in within 10 minutes; aal2 once the user has a factor): its secret and otpauth URI; verified by its first code',
      security: AccessTokenSecurity,
      response: {
        201: Type.Object({ factor_id: Type.String({ format: 'uuid' }), secret: Type.String({ description: 'base32, for typing in' }), otpauth_uri: Type.String({ description: 'for a QR code' }) }),
        ...problems(400, 401, 403, 413, 415, 503)
      }
    }
  }, async (request, reply) => {
    const added = await fastify.mfa.enroll(request.user, request.claims!, callerOf(request))
    return reply.code(201).send({ factor_id: added.factorId, secret: added.secret, otpauth_uri: added.uri })
  })
}

export default totp
