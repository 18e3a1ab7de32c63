// @fastify/rate-limit's own stores, which its package ships without types.
declare module '@fastify/rate-limit/store/*.js' {
  type Done = (error: Error | null, result?: { current: number, ttl: number }) => void
  class Store {
    constructor (continueExceeding: boolean, exponentialBackoff: boolean, ...rest: unknown[])
    incr (key: string, done: Done, timeWindow: number, max: number): void
  }
  export default Store
}
