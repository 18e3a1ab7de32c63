import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { callerOf } from '#src/http/caller.ts'
import { perIp, perKey } from '#src/http/limits.ts'
import { AccessTokenSecurity, problems, SecondFactorCodeSchema, SecondFactorMethodSchema, TokenPairSchema } from '#src/schemas.ts'
import { SessionParamsSchema } from './sessions.ts'

const CodeSchema = Type.String({ pattern: '^[0-9]{6}$', description: 'the 6-digit code the authenticator app shows' })
const RecoveryCodesSchema = Type.Array(Type.String(), { description: 'shown once: keep them somewhere safe' })
const FactorSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  kind: Type.Literal('totp'),
  created_at: Type.String({ format: 'date-time' }),
  verified: Type.Boolean()
})

// A session signed in with the cookies gets its new pair in the cookies too; a Bearer client in the body.
const byCookie = (request: FastifyRequest): boolean => request.headers.authorization === undefined

/** Second factors (docs/mfa.md): TOTP, recovery codes, the second step of a sign-in and the step-up of a session. */
const mfa: FastifyPluginAsyncTypebox = async (fastify) => {
  const { mfa, config } = fastify
  // Every code guessed counts per address, and per account (with the account's sign-ins): by the
  // signed-in user, or the user an mfa_token is for (an unknown token counts apart).
  const perIpLimit = perIp('credentials', config.RATE_LIMIT_CREDENTIALS_MAX)
  const accountCodeLimits = { limits: [perIpLimit, perKey('account', config.RATE_LIMIT_IDENTIFIER_MAX, async (request) => `user:${request.user.id}`)] }
  const secondStepLimits = {
    limits: [perIpLimit, perKey('account', config.RATE_LIMIT_IDENTIFIER_MAX, async (request) => {
      const { mfa_token: mfaToken } = request.body as { mfa_token?: string }
      return `user:${mfaToken === undefined ? request.user.id : await mfa.challengedUser(mfaToken) ?? 'none'}`
    })]
  }

  fastify.post('/mfa/totp', {
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
    const added = await mfa.enroll(request.user, request.claims!, callerOf(request))
    return reply.code(201).send({ factor_id: added.factorId, secret: added.secret, otpauth_uri: added.uri })
  })

  fastify.post('/mfa/totp/:id/verify', {
    onRequest: [fastify.authenticate],
    config: accountCodeLimits,
    schema: {
      tags: ['mfa'],
      summary: 'Verify a new authenticator app by its code: the session becomes aal2 (a new pair); the first factor brings 10 recovery codes',
      security: AccessTokenSecurity,
      params: SessionParamsSchema,
      body: Type.Object({ code: CodeSchema }, { additionalProperties: false }),
      response: {
        200: Type.Object({ ...TokenPairSchema.properties, recovery_codes: Type.Optional(RecoveryCodesSchema) }),
        ...problems(400, 401, 404, 413, 415, 429, 503)
      }
    }
  }, async (request, reply) => {
    const { pair, recoveryCodes } = await mfa.verifyEnrollment(request.user, request.claims!, request.params.id, request.body.code, callerOf(request))
    if (byCookie(request)) reply.setAuthCookies(pair)
    return { ...pair, ...(recoveryCodes === undefined ? {} : { recovery_codes: recoveryCodes }) }
  })

  fastify.get('/mfa/factors', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'The signed-in user\'s second factors',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ factors: Type.Array(FactorSchema) }), ...problems(400, 401, 503) }
    }
  }, async (request) => ({
    factors: (await mfa.list(request.user.id)).map((f) => ({ ...f, created_at: f.created_at.toISOString() }))
  }))

  fastify.delete('/mfa/factors/:id', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'Remove a second factor: a verified one from an aal2 session signed in or stepped up within 10 minutes',
      security: AccessTokenSecurity,
      params: SessionParamsSchema,
      response: { 204: Type.Null(), ...problems(400, 401, 403, 404, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await mfa.remove(request.user.id, request.claims!, request.params.id, callerOf(request))
    return reply.code(204).send(null)
  })

  fastify.get('/mfa/recovery-codes', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'How many recovery codes are left',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ remaining: Type.Integer() }), ...problems(400, 401, 503) }
    }
  }, async (request) => ({ remaining: await mfa.recoveryCodesLeft(request.user.id) }))

  fastify.post('/mfa/recovery-codes', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['mfa'],
      summary: 'Ten new recovery codes, the old ones dead (an aal2 session signed in or stepped up within 10 minutes)',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ recovery_codes: RecoveryCodesSchema }), ...problems(400, 401, 403, 413, 415, 503) }
    }
  }, async (request) => ({ recovery_codes: await mfa.regenerateRecoveryCodes(request.user.id, request.claims!, callerOf(request)) }))

  fastify.post('/mfa/verify', {
    // A step-up is of a signed-in session: authenticated before the per-account limit counts it.
    preHandler: async (request, reply) => {
      if (request.body.mfa_token === undefined) await fastify.authenticate(request, reply)
    },
    config: secondStepLimits,
    schema: {
      tags: ['mfa'],
      summary: 'The second step: with the mfa_token of a sign-in, its pair (and cookies where it sets them); with an access token instead, a step-up of the session to aal2',
      security: [...AccessTokenSecurity, {}],
      body: Type.Object({
        mfa_token: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' })),
        method: SecondFactorMethodSchema,
        code: SecondFactorCodeSchema
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

export default mfa
