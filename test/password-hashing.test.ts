import { pbkdf2 } from 'node:crypto'
import { promisify } from 'node:util'
import t from 'tap'
import { hashingSlots, hashingState } from '../src/lib/password-hashing.ts'
import { build, eventually, postJson, uniqueUser } from './helper.ts'

// Password hashing (bcrypt) in libuv's thread pool, which the process's other asynchronous work
// shares: WebCrypto's signature checks (ID-token and passkey sign-ins), file reads, DNS.

t.test('as many hashings at once as the cores, never every thread of the pool', async (t) => {
  t.equal(hashingSlots(4, 2), 2, 'libuv\'s 4 threads on 2 cores: 2, two threads left')
  t.equal(hashingSlots(4, 8), 3, 'on 8 cores: one thread is left')
  t.equal(hashingSlots(16, 8), 8, 'a larger UV_THREADPOOL_SIZE: every core')
  t.equal(hashingSlots(1, 8), 1, 'a pool of one: the one')
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
  t.match(hashingState(), { running: hashingSlots() }, 'as many at work as there are slots')

  // Work of the pool's other users, asked while the logins' checks take a quarter of a second
  // each. Catches every check put in the pool's own queue (first in, first out): this work
  // waited there behind all of them, for the first five to finish.
  await promisify(pbkdf2)('password', 'salt', 1, 32, 'sha256')
  const answeredBefore = answered
  t.same(await Promise.all(flood), Array(logins).fill(200), 'every login signs in')
  t.equal(answeredBefore, 0, 'it did not wait for any login\'s check')
})
