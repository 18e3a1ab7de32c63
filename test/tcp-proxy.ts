import { once } from 'node:events'
import { createConnection, createServer, type Socket } from 'node:net'
import type { Test } from 'tap'

export interface TcpProxy {
  port: number
  /** Stops forwarding in both directions, on open and new connections: a network that hangs. */
  pause: () => void
  resume: () => void
  /** Cuts every connection and refuses new ones: the database is gone. */
  close: () => Promise<void>
  /** Takes connections again on the same port, after close(): the database is back. */
  reopen: () => Promise<void>
}

/** A proxy on 127.0.0.1 in front of 127.0.0.1:`targetPort`, for stalling or cutting a database. */
export async function startProxy (targetPort: number): Promise<TcpProxy> {
  const pairs = new Set<[Socket, Socket]>()
  let paused = false
  const server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort })
    const pair: [Socket, Socket] = [client, upstream]
    pairs.add(pair)
    client.pipe(upstream)
    upstream.pipe(client)
    // After pipe(), which resumes its source.
    if (paused) { client.pause(); upstream.pause() }
    const end = (): void => { client.destroy(); upstream.destroy(); pairs.delete(pair) }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  return {
    port,
    pause: () => {
      paused = true
      for (const [a, b] of pairs) { a.pause(); b.pause() }
    },
    resume: () => {
      paused = false
      for (const [a, b] of pairs) { a.resume(); b.resume() }
    },
    close: async () => {
      for (const [a, b] of pairs) { a.destroy(); b.destroy() }
      if (!server.listening) return
      server.close()
      await once(server, 'close')
    },
    reopen: async () => {
      if (server.listening) return
      server.listen(port, '127.0.0.1')
      await once(server, 'listening')
    }
  }
}

/** A proxy in front of the PostgreSQL of `databaseUrl`, closed when the test ends, and the URL through it. */
export async function proxyDatabase (t: Test, databaseUrl: string): Promise<{ proxy: TcpProxy, url: string }> {
  const url = new URL(databaseUrl)
  const proxy = await startProxy(Number(url.port))
  t.teardown(() => proxy.close())
  url.port = String(proxy.port)
  return { proxy, url: url.toString() }
}
