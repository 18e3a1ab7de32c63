import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { Test } from 'tap'

/**
 * A page server on 127.0.0.1: the HTML of `pages` by path (JavaScript for a path ending in .js,
 * which a module script needs); each request's URL goes to `seen`. Closed at teardown.
 */
export async function servePages (t: Test, pages: Record<string, string>, seen: string[] = []): Promise<number> {
  const server: Server = createServer((request, response) => {
    seen.push(request.url ?? '')
    const path = new URL(request.url ?? '/', 'http://x').pathname
    const page = pages[path]
    const type = page !== undefined && path.endsWith('.js') ? 'text/javascript' : 'text/html'
    response.writeHead(page === undefined ? 404 : 200, { 'content-type': `${type}; charset=utf-8` }).end(page ?? 'not found')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(closeOnce(server))
  return (server.address() as { port: number }).port
}

/** Closes `server` and its open connections, once however often it is called (by a test, and by its teardown). */
export function closeOnce (server: Server): () => Promise<void> {
  let closed: Promise<void> | undefined
  return async () => {
    closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    })
    return await closed
  }
}
