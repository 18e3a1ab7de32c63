import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { clientCode, isDomainError } from '#src/errors.ts'
import { callerOf } from '#src/http/caller.ts'
import { credentialLimits } from '#src/http/limits.ts'
import { withFragment } from '#src/http/upstream-redirect.ts'
import { problems, ProviderParamsSchema } from '#src/schemas.ts'
import { FlowFailure } from '#src/services/upstream/upstream.ts'

const callback: FastifyPluginAsyncTypebox = async (fastify) => {
  const { cookieNames } = fastify.config

  fastify.get('/:provider/callback', {
    config: { limits: credentialLimits(fastify.config) },
    schema: {
      tags: ['upstream'],
      summary: 'Where the identity provider sends the browser back: signs in (or links) and answers 302 to the flow\'s return_to, what it says in the fragment',
      params: ProviderParamsSchema,
      // The provider's answer (code, state, iss; or error): read whole from the URL, as RFC 9207 checks it.
      querystring: Type.Record(Type.String(), Type.String({ maxLength: 4096 })),
      response: { 302: Type.Null({ description: 'To the flow\'s return_to: cookies set, or #mfa_token=…, #linked=<provider> or #error=<code>' }), ...problems(400, 404, 429, 503) }
    }
  }, async (request, reply) => {
    const { provider } = request.params
    const flowSecret = request.cookies[cookieNames.flow]
    reply.header('cache-control', 'no-store').clearFlowCookie()
    try {
      const { returnTo, outcome } = await fastify.upstream.finish(provider, new URLSearchParams(request.query), flowSecret, callerOf(request))
      if (outcome.kind === 'linked') return reply.redirect(withFragment(returnTo, { linked: outcome.provider }), 302)
      const { step } = outcome
      if (step.kind === 'mfa') return reply.redirect(withFragment(returnTo, { mfa_token: step.challenge.mfaToken, methods: step.challenge.methods.join(',') }), 302)
      return reply.setAuthCookies(step.pair).redirect(returnTo, 302)
    } catch (error) {
      if (!(error instanceof FlowFailure)) throw error
      const cause = error.cause
      // The fragment says the code as problem+json does.
      const code = isDomainError(cause) ? clientCode(cause) : 'server_error'
      if (code === 'server_error') request.log.error({ err: cause }, 'an upstream sign-in failed')
      else request.log.info({ provider, code, reason: (cause as Error).message }, 'an upstream sign-in was refused')
      return reply.redirect(withFragment(error.returnTo, { error: code }), 302)
    }
  })
}

export default callback
