import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { perIp } from '#src/http/limits.ts'
import { MailedLinkSchema, problems } from '#src/schemas.ts'

/** POST /api/auth/password/reset/inspect: whether a reset link's token is still good; spends nothing. */
const inspect: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/inspect', {
    config: { limits: [perIp('token', fastify.config.RATE_LIMIT_TOKEN_MAX)] },
    schema: {
      tags: ['account'],
      summary: 'Whether a reset link\'s token is still good, without spending it (a POST: nothing a link scanner sends reaches it)',
      body: MailedLinkSchema,
      response: {
        200: Type.Object({
          valid: Type.Boolean(),
          expires_at: Type.Optional(Type.String({ format: 'date-time' })),
          mfa_required: Type.Optional(Type.Boolean({ description: 'the reset takes a code of the account\'s second factor too' }))
        }, { additionalProperties: false }),
        ...problems(400, 413, 415, 429, 503)
      }
    }
  }, async (request) => {
    const found = await fastify.passwordReset.inspect(request.body.token)
    return found.valid ? { valid: true, expires_at: found.expiresAt!.toISOString(), mfa_required: found.mfaRequired! } : { valid: false }
  })
}

export default inspect
