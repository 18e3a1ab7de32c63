import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { byCookie } from '#src/http/by-cookie.ts'
import { callerOf } from '#src/http/caller.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { AccessTokenSecurity, problems, MfaCodeSchema, MfaMethodSchema, TokenPairSchema } from '#src/schemas.ts'

/** The second step of a sign-in, or the step-up of a session (docs/mfa.md). */
const verify: FastifyPluginAsyncTypebox = async (fastify) => {
  const { mfa, config } = fastify

  fastify.post('/verify', {
    // A step-up is of a signed-in session: authenticated before the per-account limit counts it.
    preHandler: async (request, reply) => {
      if (request.body.mfa_token === undefined) await fastify.authenticate(request, reply)
    },
    // Every code guessed counts per address, and per account (with the account's sign-ins): the
    // signed-in user, or the user an mfa_token is for (an unknown token counts apart).
    config: {
      limits: credentialLimits(config, async (request) => {
        const { mfa_token: mfaToken } = request.body as { mfa_token?: string }
        return `user:${mfaToken === undefined ? request.user.id : await mfa.challengedUser(mfaToken) ?? 'none'}`
      })
    },
    schema: {
      tags: ['mfa'],
      summary: 'The second step: with the mfa_token of a sign-in, its pair (and cookies where it sets them); with an access token instead, a step-up of the session to aal2',
      security: [...AccessTokenSecurity, {}],
      body: Type.Object({
        mfa_token: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' })),
        method: MfaMethodSchema,
        code: MfaCodeSchema
      }, { additionalProperties: false }),
      response: { 200: TokenPairSchema, ...problems(400, 401, 403, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const { mfa_token: mfaToken, method, code } = request.body
    if (mfaToken !== undefined) {
      const done = await mfa.completeSignIn(mfaToken, method, code, callerOf(request))
      return (done.cookies ? reply.setAuthCookies(done.pair) : reply).send(done.pair)
    }
    const pair = await mfa.stepUp(request.user, request.claims!, method, code, callerOf(request))
    return (byCookie(request) ? reply.setAuthCookies(pair) : reply).send(pair)
  })
}

export default verify
