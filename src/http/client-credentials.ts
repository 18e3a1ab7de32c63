import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { InvalidClientError, InvalidRequestError } from '../errors.ts'
import type { ClientClaim } from '../services/auth/auth.ts'
import { JWT_BEARER_ASSERTION } from '../services/oauth/clients.ts'

/** The client parameters of an OAuth request body (RFC 6749 §2.3.1, RFC 7523 §2.2). */
export interface ClientParameters {
  client_id?: string
  client_secret?: string
  client_assertion?: string
  client_assertion_type?: string
}

// RFC 6749 §2.3.1: the id and secret are form-encoded before base64.
function formDecoded (part: string): string {
  try {
    return decodeURIComponent(part.replaceAll('+', ' '))
  } catch {
    throw new InvalidClientError('the Authorization header\'s id or secret is not form-encoded (RFC 6749 §2.3.1).')
  }
}

/**
 * The client a request to an OAuth endpoint names, by exactly one method (RFC 6749 §2.3: a
 * client uses one): HTTP Basic (client_secret_basic), the body's client_id and client_secret
 * (client_secret_post), or a signed assertion (private_key_jwt); a bare client_id is a public
 * client. More than one method, or a half-given one, is invalid_request.
 */
export function clientCredentialsOf (request: FastifyRequest, body: ClientParameters): ClientClaim {
  const { authorization } = request.headers
  const { client_id: id, client_secret: secret, client_assertion: assertion, client_assertion_type: assertionType } = body
  if (authorization !== undefined) {
    const [scheme, encoded, ...rest] = authorization.split(' ')
    if (scheme?.toLowerCase() !== 'basic' || encoded === undefined || rest.length > 0) throw new InvalidClientError('the Authorization header is not HTTP Basic: a client authenticates with Basic, or in the body.')
    if (secret !== undefined || assertion !== undefined) throw new InvalidRequestError('Authenticate the client one way only: HTTP Basic, client_secret in the body, or client_assertion.')
    const decoded = Buffer.from(encoded, 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon < 0) throw new InvalidClientError('the Authorization header is not Basic base64(client_id:client_secret).')
    const basicId = formDecoded(decoded.slice(0, colon))
    if (id !== undefined && id !== basicId) throw new InvalidRequestError('client_id differs from the client of the Authorization header.')
    return { method: 'client_secret_basic', id: basicId, secret: formDecoded(decoded.slice(colon + 1)) }
  }
  if (assertion !== undefined || assertionType !== undefined) {
    if (secret !== undefined) throw new InvalidRequestError('Authenticate the client one way only: client_secret or client_assertion.')
    if (assertionType !== JWT_BEARER_ASSERTION || assertion === undefined) throw new InvalidRequestError(`client_assertion goes with client_assertion_type=${JWT_BEARER_ASSERTION}.`)
    return { method: 'private_key_jwt', assertion, ...(id === undefined ? {} : { id }) }
  }
  if (secret !== undefined) {
    if (id === undefined) throw new InvalidRequestError('client_secret goes with client_id.')
    return { method: 'client_secret_post', id, secret }
  }
  return id === undefined ? undefined : { method: 'none', id }
}

/**
 * onError hook of the routes that authenticate clients: a refused client is logged, with the
 * client_id it named and the same reason its answer gives, so the operator sees why a client
 * nobody here wrote cannot get in.
 */
export async function logClientRefusal (request: FastifyRequest, _reply: FastifyReply, error: FastifyError): Promise<void> {
  if (!(error instanceof InvalidClientError)) return
  let named: string | undefined
  try {
    named = clientCredentialsOf(request, (request.body ?? {}) as ClientParameters)?.id
  } catch {}
  request.log.info({ client_id: named, reason: error.message }, 'client authentication failed')
}
