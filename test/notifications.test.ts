import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { listenForNotifications } from '../src/db/notifications.ts'
import { eventually, freshDatabase } from './helper.ts'
import { proxyDatabase } from './tcp-proxy.ts'

// The notification listener's heartbeat (src/db/notifications.ts) through an outage of its
// connection. PostgreSQL only: PGlite has no listener.
const skip = process.env.DB_ENGINE !== 'postgres' && 'the notification listener runs on PostgreSQL only'

t.test('a heartbeat connection that stalls, then breaks, leaves one heartbeat per tick at most', { skip }, async (t) => {
  const direct = (await freshDatabase(t)).DATABASE_URL!
  const { proxy, url: throughProxy } = await proxyDatabase(t, direct)
  const everyMs = 20
  let beats = 0
  const listener = listenForNotifications({
    listenUrl: direct,
    beatUrl: throughProxy,
    channels: { authgate_test: () => {} },
    onListening: () => {},
    onBeat: () => { beats++ },
    onLost: () => {},
    warn: () => {},
    beatIntervalMs: everyMs,
    silenceWarningMs: 3_600_000
  })
  t.teardown(() => listener.close())
  t.ok(await eventually(() => beats >= 3), 'heartbeats arrive')

  // Fifty ticks while the heartbeat's connection hangs, then the connection is cut and the
  // database takes connections again.
  proxy.pause()
  await sleep(50 * everyMs)
  await proxy.close()
  await proxy.reopen()
  proxy.resume()
  const resumed = beats
  t.ok(await eventually(() => beats > resumed), 'heartbeats arrive again')

  // Catches a tick that queued a heartbeat behind the stalled one, each of whose failures then
  // started an interval of its own after the backoff's wait (the longest 5 s): fifty intervals,
  // fifty heartbeats a tick, and more at every outage after it (a test process spun on them to
  // 4 GB). Counted once the longest wait has passed; a slow machine sends fewer, never more.
  // They are counted as they arrive: a listener held off the CPU for a while receives the ones
  // it missed in a bunch, so the bound is two a tick, and the defect sent fifty.
  await sleep(5500)
  const from = beats
  await sleep(1000)
  const perSecond = beats - from
  t.ok(perSecond <= 2 * 1000 / everyMs, `${perSecond} heartbeats in a second, about one per ${everyMs} ms tick at most`)
})
