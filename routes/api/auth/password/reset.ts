import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ValidationFailedError } from '#src/errors.ts'
import { callerOf } from '#src/http/caller.ts'
import { mailedProofOf } from '#src/http/mailed-proof.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { MailedProofFieldsSchema, PasswordSchema, problems, MfaCodeSchema, MfaMethodSchema } from '#src/schemas.ts'

/** POST /api/auth/password/reset (docs/email.md): a new password by the mail's link or code; every session ends. */
const reset: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/reset', {
    config: { limits: credentialLimits(fastify.config) },
    schema: {
      tags: ['account'],
      summary: 'Set a new password with the reset mail\'s token, or its address and code: every session ends, nobody is signed in',
      body: Type.Object({
        ...MailedProofFieldsSchema.properties,
        new_password: PasswordSchema,
        // An account with a second factor: a code of it too (inspect says whether one is needed).
        mfa_method: Type.Optional(MfaMethodSchema),
        mfa_code: Type.Optional(MfaCodeSchema)
      }, { additionalProperties: false }),
      response: { 204: Type.Null(), ...problems(400, 403, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const { token, email, code, new_password: password, mfa_method: method, mfa_code: mfaCode } = request.body
    const proof = mailedProofOf({ token, email, code })
    if ((method === undefined) !== (mfaCode === undefined)) throw new ValidationFailedError([{ field: 'mfa_code', message: 'Give mfa_method and mfa_code together.' }])
    const second = method === undefined ? undefined : { method, code: mfaCode! }
    await fastify.passwordReset.reset(proof, password, callerOf(request), second)
    return reply.code(204).send(null)
  })
}

export default reset
