import type { FastifyRequest } from 'fastify'

/** Whether a signed-in request came with the cookies (no Bearer header): its new pair then goes in the cookies too, a Bearer client's in the body alone. */
export const byCookie = (request: FastifyRequest): boolean => request.headers.authorization === undefined
