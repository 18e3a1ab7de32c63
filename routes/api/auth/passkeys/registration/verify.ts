import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { AccessTokenSecurity, ChallengeIdSchema, PasskeyNameSchema, problems, RegistrationCredentialSchema } from '#src/schemas.ts'

/** A new passkey's registration, its answer verified and kept (docs/passkeys.md). */
const verify: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/verify', {
    onRequest: [fastify.authenticate],
    config: { limits: credentialLimits(fastify.config) },
    schema: {
      tags: ['passkeys'],
      summary: 'Finish adding a passkey: the browser\'s answer to the options of this session\'s challenge_id',
      security: AccessTokenSecurity,
      body: Type.Object({
        challenge_id: ChallengeIdSchema,
        credential: RegistrationCredentialSchema,
        name: Type.Optional(PasskeyNameSchema)
      }, { additionalProperties: false }),
      response: { 201: Type.Object({ id: Type.String({ format: 'uuid' }) }), ...problems(400, 401, 403, 409, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const { challenge_id: challengeId, credential, name } = request.body
    const added = await fastify.passkeys.register(request.user, request.claims!, {
      challengeId,
      response: credential as never,
      ...(name === undefined ? {} : { name })
    }, callerOf(request))
    return reply.code(201).send(added)
  })
}

export default verify
