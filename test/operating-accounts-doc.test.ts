// Issue 26, item 13: the first admin client's commands of docs/operating-accounts.md, run by
// bash as they are written there (only the stand-in of PUBLIC_URL replaced) against a running
// service, so that the page cannot drift from what works again.
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { freshDatabase, serverEnv } from './helper.ts'
import { freePort, startServer } from './server-process.ts'

const root = join(import.meta.dirname, '..')
const run = promisify(execFile)

/** The first ```sh block after the heading `heading` of the Markdown `text`. */
function blockAfter (text: string, heading: string): string {
  const at = text.indexOf(`\n${heading}\n`)
  const block = at === -1 ? null : /```sh\n([\s\S]*?)```/.exec(text.slice(at))
  if (block === null) throw new Error(`no sh block after ${heading}`)
  return block[1]!
}

t.test('the first admin client\'s commands, as the docs write them, give an operator a token the admin API takes', async (t) => {
  const page = await readFile(join(root, 'docs', 'operating-accounts.md'), 'utf8')
  const readme = await readFile(join(root, 'README.md'), 'utf8')
  // The README's helper, as the page says.
  const json = /^json\(\) \{.*\}$/m.exec(readme)?.[0]
  t.ok(json, 'the README defines json')

  const port = await freePort()
  const publicUrl = `http://localhost:${port}`
  const env = serverEnv(await freshDatabase(t), { PORT: String(port), PUBLIC_URL: publicUrl })
  const server = startServer(env)
  t.teardown(() => { server.child.kill('SIGKILL') })
  const url = await server.listening
  const alice = { username: 'alice', email: 'alice@example.com', password: 'correct horse battery staple' }
  t.equal((await fetch(`${url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(alice) })).status, 201)

  // Where an operator runs them: in authgate's folder (npm finds package.json upward from here),
  // with the service's configuration and the Node.js that runs the tests.
  await mkdir(join(root, '.tap'), { recursive: true })
  const cwd = await mkdtemp(join(root, '.tap', 'operating-accounts-'))
  t.teardown(() => rm(cwd, { recursive: true, force: true }))
  const script = [
    'set -euo pipefail',
    json!,
    blockAfter(page, '## The first admin client'),
    'printf \'TOKEN=%s\\n\' "$TOKEN"',
    blockAfter(page, '## Find and read users')
  ].join('\n').replaceAll('http://localhost:3000', publicUrl)
  const { stdout } = await run('bash', ['-c', script], { cwd, env: { ...env, PATH: `${dirname(process.execPath)}:${process.env.PATH}` } })

  const ops = join(cwd, 'ops.json')
  t.same(Object.keys(JSON.parse(await readFile(ops, 'utf8'))).sort(), ['client_id', 'client_secret', 'token_endpoint_auth_method'], 'ops.json holds the command\'s JSON alone')
  t.equal((await stat(ops)).mode & 0o777, 0o600, 'and is its owner\'s alone')
  const token = /^TOKEN=(.*)\n/.exec(stdout)?.[1]
  t.match(token, /^eyJ[\w-]+\.[\w-]+\.[\w-]+$/, 'a token came')
  t.match(stdout, /\n\{"users":\[\{"id":1,"username":"alice","email":"alice@example\.com","status":"active"/, 'the admin API found alice')
  t.match(stdout, /"active_sessions":0\}$/, 'and read her account')
  t.equal(await server.stop(), 0)
})
