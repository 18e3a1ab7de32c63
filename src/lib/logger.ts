/** What services log with: pino's methods (Fastify's logger, a request's, or the CLI's own). */
export interface Logger {
  info: (details: object, message: string) => void
  warn: (details: object, message: string) => void
  error: (details: object, message: string) => void
}

/** Says nothing: for code that is given no logger. */
export const silentLogger: Logger = { info: () => {}, warn: () => {}, error: () => {} }
