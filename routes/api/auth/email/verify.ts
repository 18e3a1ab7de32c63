import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ValidationFailedError } from '#src/errors.ts'
import { callerOf } from '#src/lib/client.ts'
import { perIp } from '#src/lib/limits.ts'
import { EmailSchema, MailCodeSchema, MailTokenSchema, problems } from '#src/schemas.ts'

/** POST /api/auth/email/verify (docs/email.md): the verification mail's link token, or its address and code. */
const verify: FastifyPluginAsyncTypebox = async (fastify) => {
  if (fastify.config.EMAIL_VERIFICATION === 'off') return
  fastify.post('/verify', {
    config: { limits: [perIp('credentials', fastify.config.RATE_LIMIT_CREDENTIALS_MAX)] },
    schema: {
      tags: ['account'],
      summary: 'Verify an address with the verification mail\'s token, or its address and code',
      body: Type.Object({ token: Type.Optional(MailTokenSchema), email: Type.Optional(EmailSchema), code: Type.Optional(MailCodeSchema) }, { additionalProperties: false }),
      response: { 200: Type.Object({ email_verified: Type.Literal(true) }, { additionalProperties: false }), ...problems(400, 413, 415, 429, 503) }
    }
  }, async (request) => {
    const { token, email, code } = request.body
    const byLink = token !== undefined && email === undefined && code === undefined
    if (!byLink && (token !== undefined || email === undefined || code === undefined)) {
      throw new ValidationFailedError([{ field: 'token', message: 'Give the token of the link, or the email and the code, not both.' }])
    }
    await fastify.emailVerification.verify(byLink ? { token } : { email: email!, code: code! }, callerOf(request))
    return { email_verified: true as const }
  })
}

export default verify
