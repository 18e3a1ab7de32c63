import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { perIp } from '#src/http/limits.ts'
import { ChallengeIdSchema, problems } from '#src/schemas.ts'

/** The options of a sign-in by a passkey (docs/passkeys.md), for navigator.credentials.get(). */
const options: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/options', {
    config: { limits: [perIp('credentials', fastify.config.RATE_LIMIT_CREDENTIALS_MAX)] },
    schema: {
      tags: ['passkeys'],
      summary: 'Start a sign-in by a passkey: with {}, for any passkey (no username); with the mfa_token of a first step, for that user\'s passkeys',
      body: Type.Object({
        mfa_token: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' }))
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({
          challenge_id: ChallengeIdSchema,
          options: Type.Object({}, { additionalProperties: true, description: 'PublicKeyCredentialRequestOptionsJSON: user verification required' })
        }),
        ...problems(400, 401, 413, 415, 429, 503)
      }
    }
  }, async (request, reply) => {
    const mfaToken = request.body.mfa_token
    const { challengeId, options } = await fastify.passkeys.authenticationOptions(mfaToken === undefined ? {} : { mfaToken })
    return reply.header('cache-control', 'no-store').send({ challenge_id: challengeId, options })
  })
}

export default options
