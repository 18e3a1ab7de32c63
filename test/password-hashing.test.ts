import { pbkdf2 } from 'node:crypto'
import { promisify } from 'node:util'
import t from 'tap'
import { BUSY_LOOP, hashingLimiter, hashingSlots, hashingState, loopUtilization } from '../src/lib/password-hashing.ts'
import { build, eventually, postJson, uniqueUser } from './helper.ts'

// Password hashing (bcrypt) in libuv's thread pool, which the process's other asynchronous work
// shares: WebCrypto's signature checks (ID-token and passkey sign-ins), file reads, DNS.

t.test('as many hashings at once as the cores, never every thread of the pool', async (t) => {
  t.equal(hashingSlots(4, 2), 2, 'libuv\'s 4 threads on 2 cores: 2, two threads left')
  t.equal(hashingSlots(4, 8), 3, 'on 8 cores: one thread is left')
  t.equal(hashingSlots(16, 8), 8, 'a larger UV_THREADPOOL_SIZE: every core')
  t.equal(hashingSlots(1, 8), 1, 'a pool of one: the one')
})

t.test('the event loop\'s utilization: the share of the time since the last reading that it was at work', async (t) => {
  // Node's readings as the test gives them (milliseconds idle and active since the loop started).
  const readings = [{ idle: 0, active: 0 }, { idle: 10, active: 30 }, { idle: 20, active: 80 }, { idle: 60, active: 90 }]
  const read = loopUtilization(() => readings.shift()!)
  t.equal(read(), 0, 'less than 50 ms since the last reading: that reading\'s, none yet')
  t.equal(read(), 0.8, '100 ms since, 80 of them at work')
  t.equal(read(), 0.2, '50 ms since, 10 of them at work')

  // Node's own: 120 ms of synchronous work reads busy. Not the other way round: 120 ms of sleep
  // reads idle only if the thread gets a core when it needs one, since Node counts all the time
  // outside its wait for events as active, the thread's wait for a core included. A run of
  // .ci/run read 1.00 after such a sleep, and one run in eight beside four busy loops read 0.96.
  await new Promise((resolve) => setImmediate(resolve)) // the event loop has started: it reads nothing before
  const utilization = loopUtilization()
  const busyUntil = performance.now() + 120
  while (performance.now() < busyUntil);
  const busy = utilization()
  t.ok(busy > 0.5, `${busy.toFixed(2)} after 120 ms of work`)
})

t.test('one slot fewer while the event loop is busy, and every slot again once it is not', async (t) => {
  let utilization = 0
  const slots = hashingLimiter(2, () => utilization)
  // Hashings the test ends one by one, in the order they started.
  const started: string[] = []
  const ends: Array<() => void> = []
  const hashing = (name: string): Promise<void> => slots.run(() => new Promise<void>((resolve) => { started.push(name); ends.push(resolve) }))
  const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))
  const end = async (): Promise<void> => { ends.shift()!(); await settle() }

  const all = ['a', 'b', 'c', 'd', 'e'].map(hashing)
  await settle()
  t.same(started, ['a', 'b'], 'a quiet loop: both slots')
  t.match(slots.state(), { running: 2, waiting: 3, allowed: 2 })

  utilization = BUSY_LOOP
  await end()
  t.same(started, ['a', 'b'], 'the loop busy: a hashing that ends frees no slot')
  t.match(slots.state(), { running: 1, waiting: 3, allowed: 1 })
  await end()
  t.same(started, ['a', 'b', 'c'], 'one at a time')
  t.match(slots.state(), { running: 1, waiting: 2, allowed: 1 })

  utilization = BUSY_LOOP / 2
  await end()
  t.same(started, ['a', 'b', 'c', 'd', 'e'], 'the loop quiet again: both slots')
  t.match(slots.state(), { running: 2, waiting: 0, allowed: 2 })
  await end()
  await end()
  await Promise.all(all)
  t.match(slots.state(), { running: 0, waiting: 0 })
})

t.test('a login flood leaves a thread of the pool to the rest of the process', async (t) => {
  const app = await build(t, { env: { BCRYPT_COST: '12' } })
  const user = uniqueUser('flood')
  t.equal((await postJson(app, '/api/auth/register', user)).statusCode, 201)
  const logins = 8
  let answered = 0
  const flood = Array.from({ length: logins }, async () => {
    const res = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
    answered++
    return res.statusCode
  })
  t.ok(await eventually(() => hashingState().running + hashingState().waiting === logins), 'every login is at its password check')
  // Both slots, or one while this process's event loop is busy (the test's own work counts).
  const { running } = hashingState()
  t.ok(running >= 1 && running <= hashingSlots(), `${running} at work: at least one, at most as many as there are slots`)

  // Work of the pool's other users, asked while the logins' checks take a quarter of a second
  // each. Catches every check put in the pool's own queue (first in, first out): this work
  // waited there behind all of them, for the first five to finish.
  await promisify(pbkdf2)('password', 'salt', 1, 32, 'sha256')
  const answeredBefore = answered
  t.same(await Promise.all(flood), Array(logins).fill(200), 'every login signs in')
  t.equal(answeredBefore, 0, 'it did not wait for any login\'s check')
})
