import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { perIp } from '#src/http/limits.ts'
import { AccessTokenSecurity, ChallengeIdSchema, problems } from '#src/schemas.ts'

/** The options of a new passkey's registration (docs/passkeys.md), for navigator.credentials.create(). */
const options: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/options', {
    onRequest: [fastify.authenticate],
    config: { limits: [perIp('credentials', fastify.config.RATE_LIMIT_CREDENTIALS_MAX)] },
    schema: {
      tags: ['passkeys'],
      summary: 'Start adding a passkey (a sign-in within 10 minutes; aal2 once the user can sign in at aal2): the options for startRegistration, and their challenge_id',
      security: AccessTokenSecurity,
      response: {
        200: Type.Object({
          challenge_id: ChallengeIdSchema,
          options: Type.Object({}, { additionalProperties: true, description: 'PublicKeyCredentialCreationOptionsJSON: a discoverable credential, user verification required, attestation none' })
        }),
        ...problems(400, 401, 403, 413, 415, 429, 503)
      }
    }
  }, async (request, reply) => {
    const { challengeId, options } = await fastify.passkeys.registrationOptions(request.user, request.claims!)
    return reply.header('cache-control', 'no-store').send({ challenge_id: challengeId, options })
  })
}

export default options
