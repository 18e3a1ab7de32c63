import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readdir, readFile, readlink } from 'node:fs/promises'
import { createServer } from 'node:net'

export interface ServerProcess {
  child: ChildProcess
  /** Everything the process wrote, stdout and stderr. */
  output: () => string
  /** The base URL once it listens (logged at info; PORT=0 lets the system choose); rejects if it exits first. */
  listening: Promise<string>
  /** SIGTERM, then the exit code. */
  stop: () => Promise<number | null>
}

/** Runs `node src/start.js` (what `npm start` and the image run) with exactly `env`. */
export function startServer (env: Record<string, string>, args = ['src/start.js']): ServerProcess {
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  const listening = new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      output += chunk
      const url = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1]
      if (url !== undefined) resolve(url)
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    child.once('exit', (code) => reject(new Error(`the server exited (${code}) before listening:\n${output}`)))
  })
  listening.catch(() => {})
  const stop = async (): Promise<number | null> => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode
    const exited = once(child, 'exit')
    child.kill('SIGTERM')
    return (await exited)[0] as number | null
  }
  return { child, output: () => output, listening, stop }
}

/** A port free on 127.0.0.1 now, for a server that does not log at info. */
export async function freePort (): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  return port
}

/**
 * Whether process `pid` itself holds the socket listening on `port` (Linux: /proc/net/tcp's
 * listening sockets, by inode, among the process's file descriptors). A port freePort() gave is
 * free only until another test takes it: a gateway that lost it to another server exits, while
 * the port answers for that other server. Answering is not enough to know the gateway is up.
 */
export async function listensOn (pid: number | undefined, port: number): Promise<boolean> {
  if (pid === undefined) return false
  const inodes = new Set<string>()
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const lines = (await readFile(table, 'utf8').catch(() => '')).split('\n').slice(1)
    for (const line of lines) {
      const [, local, , state, , , , , , inode] = line.trim().split(/\s+/)
      // State 0A: LISTEN; the local address's port in hex after the colon.
      if (state === '0A' && local !== undefined && Number.parseInt(local.split(':')[1] ?? '', 16) === port && inode !== undefined) inodes.add(`socket:[${inode}]`)
    }
  }
  if (inodes.size === 0) return false
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])
  for (const fd of fds) if (inodes.has(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''))) return true
  return false
}
