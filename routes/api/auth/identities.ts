import { Type, type FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { callerOf } from '#src/http/caller.ts'
import { metadataBase } from '#src/services/oauth/metadata.ts'
import { AccessTokenSecurity, IdentitySchema, problems, UuidParamsSchema } from '#src/schemas.ts'

/** The signed-in user's identities of upstream providers (docs/sign-in-with-providers.md): list, link, unlink. */
const identities: FastifyPluginAsyncTypebox = async (fastify) => {
  const { upstream } = fastify

  fastify.get('/identities', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['upstream'],
      summary: 'The signed-in user\'s linked identities of identity providers',
      security: AccessTokenSecurity,
      response: { 200: Type.Object({ identities: Type.Array(IdentitySchema) }), ...problems(400, 401, 503) }
    }
  }, async (request) => ({
    identities: (await upstream.list(request.user.id)).map((identity) => ({
      ...identity,
      created_at: identity.created_at.toISOString(),
      last_used_at: identity.last_used_at?.toISOString() ?? null
    }))
  }))

  fastify.post('/identities/link', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['upstream'],
      summary: 'Start linking an identity provider to the signed-in user (a sign-in within 10 minutes, aal2 with a second factor): the URL to open in this browser, the flow bound to it by a cookie and to this session',
      security: AccessTokenSecurity,
      body: Type.Object({
        provider: Type.String({ minLength: 1, maxLength: 32 }),
        return_to: Type.String({ minLength: 1, maxLength: 2048 })
      }, { additionalProperties: false }),
      response: { 200: Type.Object({ url: Type.String() }), ...problems(400, 401, 403, 404, 413, 415, 503) }
    }
  }, async (request, reply) => {
    const { provider, return_to: returnTo } = request.body
    const { url, flowSecret } = await upstream.startLink(provider, request.claims!, {
      returnTo,
      redirectUri: `${metadataBase(fastify.config, request)}/api/auth/oidc/${provider}/callback`
    })
    return reply.header('cache-control', 'no-store').setFlowCookie(flowSecret).send({ url })
  })

  fastify.delete('/identities/:id', {
    onRequest: [fastify.authenticate],
    schema: {
      tags: ['upstream'],
      summary: 'Unlink an identity; refused when it is the last way into the account',
      security: AccessTokenSecurity,
      params: UuidParamsSchema,
      response: { 204: Type.Null(), ...problems(400, 401, 404, 409, 413, 415, 503) }
    }
  }, async (request, reply) => {
    await upstream.unlink(request.user.id, request.params.id, callerOf(request))
    return reply.code(204).send(null)
  })
}

export default identities
