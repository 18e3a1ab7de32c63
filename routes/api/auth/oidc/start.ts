import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { credentialLimits } from '#src/http/limits.ts'
import { metadataBase } from '#src/services/oauth/metadata.ts'
import { problems, ProviderParamsSchema } from '#src/schemas.ts'

const start: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/:provider/start', {
    config: { limits: credentialLimits(fastify.config) },
    schema: {
      tags: ['upstream'],
      summary: 'Start a sign-in with an identity provider: a 302 to the provider, the flow bound to this browser by a cookie',
      params: ProviderParamsSchema,
      querystring: Type.Object({
        return_to: Type.String({ minLength: 1, maxLength: 2048, description: 'The page to come back to: one of OIDC_RETURN_URLS, exactly' })
      }, { additionalProperties: false }),
      response: { 302: Type.Null({ description: 'To the provider\'s authorization endpoint' }), ...problems(400, 404, 429, 503) }
    }
  }, async (request, reply) => {
    const { provider } = request.params
    const { url, flowSecret } = await fastify.upstream.start(provider, {
      returnTo: request.query.return_to,
      redirectUri: `${metadataBase(fastify.config, request)}/api/auth/oidc/${provider}/callback`
    })
    return reply.header('cache-control', 'no-store').setFlowCookie(flowSecret).redirect(url, 302)
  })
}

export default start
