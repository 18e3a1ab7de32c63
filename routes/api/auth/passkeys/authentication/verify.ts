import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { AuthenticationCredentialSchema, ChallengeIdSchema, problems, SignInAnswerSchema } from '#src/schemas.ts'

/** A sign-in by a passkey, or the second step of another sign-in (docs/passkeys.md). */
const verify: FastifyPluginAsyncTypebox = async (fastify) => {
  const { passkeys, mfa, config } = fastify

  fastify.post('/verify', {
    // Per address; and per account with the account's other sign-ins where an mfa_token names
    // it. A sign-in without one names no account until its passkey is verified, and a passkey is
    // not guessed: a count per credential id (no secret) would only let others lock its owner out.
    config: {
      limits: credentialLimits(config, async (request) => {
        const { mfa_token: mfaToken } = request.body as { mfa_token?: string }
        return mfaToken === undefined ? undefined : `user:${await mfa.challengedUser(mfaToken) ?? 'none'}`
      })
    },
    schema: {
      tags: ['passkeys'],
      summary: 'Sign in by a passkey: as /api/auth/login answers (aal2, cookies set), without a password or a username; with an mfa_token, the second step of a sign-in',
      body: Type.Object({
        challenge_id: ChallengeIdSchema,
        credential: AuthenticationCredentialSchema,
        mfa_token: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' }))
      }, { additionalProperties: false }),
      response: { 200: SignInAnswerSchema, ...problems(400, 401, 403, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const { challenge_id: challengeId, credential, mfa_token: mfaToken } = request.body
    const answer = { challengeId, response: credential as never }
    if (mfaToken !== undefined) {
      const done = await passkeys.completeSignIn({ ...answer, mfaToken }, callerOf(request))
      return (done.cookies ? reply.setAuthCookies(done.pair) : reply).send(done.pair)
    }
    return reply.sendSignIn(await passkeys.signIn(answer, callerOf(request)), { cookies: true })
  })
}

export default verify
