import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { Backoff } from '../lib/backoff.ts'
import { ownClient } from './connections.ts'

export interface NotificationsOptions {
  /** A direct connection (never through a transaction pooler), where LISTEN holds. */
  listenUrl: string
  /** Any connection to the same database (DATABASE_URL, a pooler too) to send the heartbeat through. */
  beatUrl: string
  /** What to do with each channel's notifications. */
  channels: Readonly<Record<string, (payload: string) => void>>
  /**
   * LISTEN holds from now on (at the start, and again after a loss): what was notified before it
   * never arrives, so whatever is kept in step by a notification alone is to be read afresh.
   */
  onListening: () => void
  /** A heartbeat arrived: every notification committed before it was sent has arrived too. */
  onBeat: () => void
  /** The listening connection was lost: whatever was notified meanwhile is unknown. */
  onLost: (error: Error) => void
  /** Something an operator should know: notifications that do not arrive, and why. */
  warn: (message: string, error?: Error) => void
  beatIntervalMs?: number
  /** How long the first heartbeat may take before the warning that notifications do not arrive. */
  silenceWarningMs?: number
}

export interface Notifications { close: () => Promise<void> }

// The heartbeat's channel is the first one's; its payload is this process's own.
const BEAT_PREFIX = 'hb:'

/**
 * LISTEN on a connection of its own, proven by a heartbeat sent from another connection every
 * 250 ms. PostgreSQL delivers notifications in the order their transactions committed, so a
 * heartbeat that arrives vouches for every revocation committed before it: whoever trusts what
 * it was told only while heartbeats arrive is never more than that behind. Through a
 * transaction pooler (PgBouncer) the LISTEN holds on a server connection the listener no longer
 * has, and nothing arrives: no heartbeat, so nothing is trusted. A pooler is found out at once
 * (the process id of the handshake is not the server's own), or when the heartbeat is handed the
 * very server connection that LISTENed: the listener stops, and says to set DATABASE_LISTEN_URL.
 */
export function listenForNotifications (options: NotificationsOptions): Notifications {
  const { listenUrl, beatUrl, channels, onListening, onBeat, onLost, warn } = options
  const beatIntervalMs = options.beatIntervalMs ?? 250
  const beat = `${BEAT_PREFIX}${randomUUID()}`
  const [beatChannel] = Object.keys(channels)
  if (beatChannel === undefined) throw new Error('no channel to listen on')

  let closed = false
  let listener: pg.Client | undefined
  let listenerPid: number | undefined
  let sender: pg.Client | undefined
  let silence: NodeJS.Timeout | undefined
  const listenWaits = new Backoff(250, 5000)
  const sendWaits = new Backoff(250, 5000)

  const stop = async (): Promise<void> => {
    closed = true
    clearInterval(timer)
    clearTimeout(silence)
    const clients = [listener, sender]
    listener = sender = undefined
    await Promise.all(clients.map((client) => client?.end().catch(() => {})))
  }

  const pooled = (): void => {
    onLost(new Error('the listener connection is pooled'))
    warn('the notification listener\'s connection goes through a transaction pooler, where LISTEN does not hold: caches stay off. Set DATABASE_LISTEN_URL to a direct connection to the database')
    stop().catch(() => {})
  }

  const listen = async (): Promise<void> => {
    const current = ownClient(listenUrl, 'authgate-listener')
    listener = current
    const lost = (error: Error): void => {
      if (listener !== current) return
      listener = undefined
      listenerPid = undefined
      clearTimeout(silence)
      current.end().catch(() => {})
      onLost(error)
      if (closed) return
      warn('database notifications lost; caches are not used until they resume', error)
      setTimeout(() => { listen().catch(() => {}) }, listenWaits.next()).unref()
    }
    current.on('error', lost)
    current.on('end', () => lost(new Error('the listener connection ended')))
    current.on('notification', ({ channel, payload = '' }) => {
      if (payload === beat) {
        clearTimeout(silence)
        listenWaits.reset()
        onBeat()
        return
      }
      if (payload.startsWith(BEAT_PREFIX)) return
      channels[channel]?.(payload)
    })
    try {
      await current.connect()
      const { rows } = await current.query<{ pid: number }>('select pg_catalog.pg_backend_pid() as pid')
      // PostgreSQL names its process in the handshake; a pooler names one of its own making.
      if (rows[0]!.pid !== (current as pg.Client & { processID: number | null }).processID) {
        listener = undefined
        await current.end().catch(() => {})
        pooled()
        return
      }
      for (const channel of Object.keys(channels)) await current.query(`listen ${current.escapeIdentifier(channel)}`)
      if (listener !== current) return
      listenerPid = rows[0]!.pid
    } catch (error) {
      lost(error as Error)
      return
    }
    onListening()
    silence = setTimeout(() => {
      warn('database notifications do not arrive: each request reads its session from the database. If DATABASE_URL goes through a transaction pooler (PgBouncer), set DATABASE_LISTEN_URL to a direct connection')
    }, options.silenceWarningMs ?? 5000).unref()
  }

  // One heartbeat at a time, on one interval for the listener's whole life: a tick while the last
  // heartbeat is still out (a loaded server, a connection being made) sends none, and after a
  // failure none goes until the backoff's wait has passed. A heartbeat queued per tick behind a
  // stalled one, each of whose failures restarted the interval, multiplied the intervals at
  // every outage: the process spun on its timers and grew by gigabytes.
  let sending = false
  let resumeAt = 0
  const send = async (): Promise<void> => {
    if (closed || sending || Date.now() < resumeAt) return
    sending = true
    try {
      if (sender === undefined) {
        const current = ownClient(beatUrl, 'authgate-heartbeat')
        current.on('error', () => { if (sender === current) sender = undefined })
        sender = current
        await current.connect()
      }
      const { rows } = await sender.query<{ pid: number }>(
        'select pg_catalog.pg_notify(cast($1 as text), cast($2 as text)), pg_catalog.pg_backend_pid() as pid', [beatChannel, beat])
      sendWaits.reset()
      // Two connections of one client, on one server process: a pooler hands them out in turn.
      if (listenerPid !== undefined && rows[0]!.pid === listenerPid) pooled()
    } catch {
      const failed = sender
      sender = undefined
      failed?.end().catch(() => {})
      // No heartbeat while it is down: the caches go unused by themselves.
      resumeAt = Date.now() + sendWaits.next()
    } finally {
      sending = false
    }
  }

  listen().catch(() => {})
  const timer = setInterval(() => { send().catch(() => {}) }, beatIntervalMs).unref()

  return {
    async close () {
      onLost(new Error('closed'))
      await stop()
    }
  }
}
