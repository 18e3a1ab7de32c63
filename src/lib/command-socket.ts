import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { chmod, rm } from 'node:fs/promises'
import { createConnection, createServer, type Socket } from 'node:net'
import { relative, resolve } from 'node:path'

/**
 * The control socket of a PGlite data folder: the service running on the folder takes the CLI's
 * commands there and runs them on its own connection (PGlite is one connection in one process).
 * A Unix socket inside the folder, owner-only like the folder and its files: whoever may use it
 * may read the database's files anyway. One request each way: the client writes its JSON and
 * half-closes, the service answers its JSON and closes.
 */
export const COMMAND_SOCKET = 'authgate.sock'

export const CommandRequestSchema = Type.Object({
  /** The command line after `node src/cli.ts`. */
  args: Type.Array(Type.String({ maxLength: 4096 }), { maxItems: 256 }),
  /** The CLI's working folder, which its relative paths (--jwks, --from) mean. */
  cwd: Type.String({ minLength: 1, maxLength: 4096 }),
  /** The migrations the CLI's version knows: a service of another version refuses. */
  migrations: Type.Array(Type.String({ maxLength: 256 }), { maxItems: 10_000 })
}, { additionalProperties: false })
export type CommandRequest = Static<typeof CommandRequestSchema>

export const CommandResultSchema = Type.Object({
  code: Type.Integer(),
  stdout: Type.String(),
  stderr: Type.String()
})
export type CommandResult = Static<typeof CommandResultSchema>

// A request is a command line: far below this. An answer (a list of clients) has no bound.
const MAX_REQUEST_BYTES = 1024 * 1024
// A client that connects and sends nothing (or never half-closes) is let go after this.
const REQUEST_TIMEOUT_MS = 10_000
// sun_path is 108 bytes on Linux (104 on macOS), its NUL included: a longer path cannot be bound.
const MAX_SOCKET_PATH_BYTES = 103

/** The path to bind or connect: absolute, or relative to the working folder when only that fits sun_path; undefined when neither does. */
export function socketAddress (file: string): string | undefined {
  const absolute = resolve(file)
  if (Buffer.byteLength(absolute) <= MAX_SOCKET_PATH_BYTES) return absolute
  const near = relative(process.cwd(), absolute)
  return Buffer.byteLength(near) <= MAX_SOCKET_PATH_BYTES ? near : undefined
}

export class CommandSocketError extends Error {
  override name = 'CommandSocketError'
}

/** The socket is there but nobody may answer: the service this file belonged to is gone. */
const NOBODY_LISTENS = new Set(['ENOENT', 'ECONNREFUSED'])

/**
 * Hands `request` to the service listening on `file` and waits for its result, however long the
 * command takes; undefined when no service listens there (no socket, or the file of a service
 * that stopped or was killed), so the caller runs the command itself.
 */
export async function sendCommand (file: string, request: CommandRequest): Promise<CommandResult | undefined> {
  const address = socketAddress(file)
  if (address === undefined) return undefined
  return await new Promise<CommandResult | undefined>((resolve, reject) => {
    const chunks: Buffer[] = []
    let connected = false
    const socket = createConnection(address)
    socket.on('connect', () => {
      connected = true
      socket.end(JSON.stringify(request))
    })
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    socket.on('error', (error: NodeJS.ErrnoException) => {
      if (!connected && NOBODY_LISTENS.has(error.code ?? '')) resolve(undefined)
      else reject(new CommandSocketError(`the service on ${file} could not be asked: ${error.message}`, { cause: error }))
    })
    socket.on('close', (hadError) => {
      if (hadError) return
      let answer: unknown
      try {
        answer = JSON.parse(Buffer.concat(chunks).toString('utf8'))
      } catch {}
      if (Value.Check(CommandResultSchema, answer)) resolve(answer)
      // A service stopped (or killed) while the command ran: whether it took effect is unknown.
      else reject(new CommandSocketError(`the service on ${file} closed the connection without an answer (it stopped?): whether the command took effect is unknown`))
    })
  })
}

export interface CommandServer {
  /** Stops taking commands, waits for those running; the socket file goes. */
  close: () => Promise<void>
}

/**
 * Listens on `file` for commands, each answered by `run`; `run` never throws (a command's
 * failure is its result). The file is the owner's alone (0600) inside a folder of the owner's
 * alone (0700, made so by the data folder's code), so the moment between the bind and the chmod
 * opens nothing to other users. A file left there by a service that is gone is replaced: the
 * caller holds the folder's lock, so no live service owns it.
 */
export async function listenForCommands (file: string, run: (request: CommandRequest) => Promise<CommandResult>): Promise<CommandServer> {
  const address = socketAddress(file)
  if (address === undefined) throw new CommandSocketError(`the path ${file} is too long for a Unix socket (${MAX_SOCKET_PATH_BYTES} bytes at most)`)
  const waiting = new Set<Socket>()
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    waiting.add(socket)
    socket.setTimeout(REQUEST_TIMEOUT_MS, () => socket.destroy())
    const chunks: Buffer[] = []
    let size = 0
    socket.on('error', () => {})
    socket.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > MAX_REQUEST_BYTES) socket.destroy()
      else chunks.push(chunk)
    })
    socket.on('end', () => {
      waiting.delete(socket)
      socket.setTimeout(0)
      let request: unknown
      try {
        request = JSON.parse(Buffer.concat(chunks).toString('utf8'))
      } catch {}
      const result: Promise<CommandResult> = Value.Check(CommandRequestSchema, request)
        ? run(request)
        : Promise.resolve({ code: 2, stdout: '', stderr: 'authgate: the service could not read the command (a CLI of another version?)' })
      result.then((answer) => { socket.end(JSON.stringify(answer)) }, () => { socket.destroy() })
    })
    socket.on('close', () => waiting.delete(socket))
  })
  await rm(file, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(address, () => {
      server.off('error', reject)
      resolve()
    })
  })
  await chmod(file, 0o600)
  return {
    async close () {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      // Those that have not sent a command yet are not waited for; running commands are.
      for (const socket of waiting) socket.destroy()
      await closed
    }
  }
}
