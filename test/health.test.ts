import t from 'tap'
import { build } from './helper.ts'

t.test('health', async (t) => {
  const app = await build(t)

  t.test('live and ready answer 200, with and without the slash', async (t) => {
    for (const url of ['/health/live', '/health/ready', '/health/live/', '/health/ready/']) {
      const res = await app.inject({ url })
      t.equal(res.statusCode, 200, url)
      t.same(res.json(), { status: 'ok' })
    }
  })

  t.test('every answer carries the security headers', async (t) => {
    const res = await app.inject({ url: '/health/live' })
    t.equal(res.headers['x-content-type-options'], 'nosniff')
    t.equal(res.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'")
    t.equal(res.headers['x-frame-options'], 'SAMEORIGIN')
  })

  t.test('ready answers 503 while the database is unreachable; live stays 200', async (t) => {
    await app.db.destroy()
    const res = await app.inject({ url: '/health/ready' })
    t.equal(res.statusCode, 503)
    t.match(res.json(), { status: 503, code: 'service_unavailable' })
    t.equal((await app.inject({ url: '/health/live' })).statusCode, 200)
  })
})
