import { readdir, readFile } from 'node:fs/promises'
import t from 'tap'
import { build, postJson, register } from './helper.ts'

// The README and docs/ against what the service does (issue 26, item 17): each place where they
// once disagreed, held by a test. Both engines.

const read = (path: string): Promise<string> => readFile(path, 'utf8')

t.test('the README\'s walk-through lists the sessions its steps made: two, the login\'s the current one', async (t) => {
  const readme = await read('README.md')
  const shown = JSON.parse(/^# (\{"sessions":.*\})$/m.exec(readme)?.[1] ?? '{}') as { sessions?: Array<Record<string, unknown>> }
  const app = await build(t)
  const user = await register(app)
  const curl = { 'user-agent': 'curl/8.0' }
  // The walk-through's steps that sign in: login by email, then a machine client's pair.
  const login = await postJson(app, '/api/auth/login', { identifier: user.email, password: user.password }, curl)
  t.equal(login.statusCode, 200)
  const { access, refresh } = login.json()
  t.equal((await postJson(app, '/api/token', { username: user.username, password: user.password }, curl)).statusCode, 200)
  t.equal((await postJson(app, '/api/token/refresh', { refresh }, curl)).statusCode, 200)
  const listed = await app.inject({ url: '/api/auth/sessions', headers: { ...curl, authorization: `Bearer ${access}` } })
  const sessions = listed.json().sessions as Array<Record<string, unknown>>
  t.same(sessions.map((s) => s.current), (shown.sessions ?? []).map((s) => s.current), 'as many sessions as the README shows, the current one where it shows it')
  t.same(sessions.map((s) => Object.keys(s).sort()), (shown.sessions ?? []).map((s) => Object.keys(s).sort()), 'with its fields')
  t.match(readme, /serves on http:\/\/localhost:3000 \(PORT, HOST\)/, 'the first command names the variables that move it')
})

t.test('cookies.md names the cookies a login sets, and counts them right', async (t) => {
  const doc = await read('docs/cookies.md')
  const table = [...doc.matchAll(/^\| `([^`]+)` \| `([^`]+)`/gm)].map(([, name, path]) => ({ name, path }))
  const app = await build(t)
  const user = await register(app)
  const login = await postJson(app, '/api/auth/login', { identifier: user.username, password: user.password })
  const set = [login.headers['set-cookie']].flat().map((cookie) => ({ name: /^([^=]+)=/.exec(String(cookie))?.[1], path: /; Path=([^;]+)/i.exec(String(cookie))?.[1] }))
  t.same(table, set, 'the table: each cookie and its path')
  const words = ['none', 'one', 'two', 'three', 'four']
  t.match(doc, new RegExp(`^Login sets ${words[set.length]} HttpOnly cookies`, 'm'), `"Login sets ${words[set.length]}"`)
  for (const path of ['README.md', ...(await readdir('docs')).map((f) => `docs/${f}`)]) {
    t.notMatch(await read(path), /\bboth cookies\b/, `${path} never says "both cookies"`)
  }
})

t.test('email.md and configuration.md name every built-in mail template', async (t) => {
  const builtIn = [...new Set((await readdir('src/templates/mail')).map((file) => file.replace(/\.(txt|html)$/, '')))].sort()
  const email = await read('docs/email.md')
  const table = [...email.matchAll(/^\| `([a-z-]+)` \| `\{\{/gm)].map(([, name]) => name).sort()
  t.same(table, builtIn, 'email.md\'s table of templates')
  const row = /^\| `MAIL_TEMPLATES_DIR` \|.*$/m.exec(await read('docs/configuration.md'))?.[0] ?? ''
  t.same(builtIn.filter((name) => !row.includes(`\`${name}\``)), [], 'configuration.md\'s MAIL_TEMPLATES_DIR row')
})

t.test('every verifier in tokens.md that makes a server starts it', async (t) => {
  const blocks = [...(await read('docs/tokens.md')).matchAll(/```js\n([\s\S]*?)```/g)].map(([, code]) => code ?? '')
  const servers = blocks.filter((code) => /Fastify\(\)|new Hono\(\)|express\(\)/.test(code))
  t.equal(servers.length, 3, 'Fastify, Hono, express')
  for (const code of servers) {
    t.match(code, /\.listen\(|^serve\(/m, `${/Fastify|Hono|express/.exec(code)?.[0]}: listens`)
  }
})
