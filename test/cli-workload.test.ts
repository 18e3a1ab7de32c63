import t from 'tap'
import { runCli } from '../src/cli.ts'
import { build, freshDatabase, SECRET_KEY } from './helper.ts'

// npm run clients for workload clients and exchange policies (issue 30): create --trust-issuer
// --subject [--trust-jwks-uri --trust-alg] [--exchange-to], show and list printing them, update
// replacing them. Both engines.

const X = 'https://x.test'
const BILLING = 'https://billing.example.test'
const PAYROLL = 'https://payroll.example.test'
const ISSUER = 'http://127.0.0.1:1/'
const SA = 'system:serviceaccount:ns:sa'

t.test('npm run clients: a workload client, its trust and exchange policy, created, shown, listed and updated', async (t) => {
  const env = { ...await freshDatabase(t), SECRET_KEY }
  t.equal((await runCli(['migrate'], env)).code, 0)
  const json = async (args: string[]) => {
    const res = await runCli(['clients', ...args, '--json'], env)
    t.equal(res.code, 0, `${args.join(' ')}: ${res.stderr}`)
    return JSON.parse(res.stdout)
  }

  t.test('create --trust-issuer --subject --json prints token_endpoint_auth_method none and no client_secret', async (t) => {
    const created = await json(['create', '--name', 'w', '--audience', X, '--trust-issuer', ISSUER, '--subject', SA])
    t.same(Object.keys(created).sort(), ['client_id', 'token_endpoint_auth_method'])
    t.match(created, { client_id: /^[0-9a-f]{32}$/, token_endpoint_auth_method: 'none' })

    const shown = await json(['show', created.client_id])
    t.match(shown, { client_id: created.client_id, name: 'w', audiences: [X], scopes: [], token_endpoint_auth_method: 'none', private_key_jwt: false, exchange_audiences: [], secrets: [] })
    t.same({ issuer: shown.trusted_issuer, jwksUri: shown.trusted_jwks_uri, subjects: shown.trusted_subjects, alg: shown.trusted_alg }, { issuer: ISSUER, jwksUri: null, subjects: [SA], alg: 'RS256' }, 'RS256 by default')
    const listed = (await json(['list'])).find((client: { client_id: string }) => client.client_id === created.client_id)
    t.match(listed, { trusted_issuer: ISSUER, trusted_jwks_uri: null, trusted_subjects: [SA], trusted_alg: 'RS256', exchange_audiences: [] })

    const text = await runCli(['clients', 'create', '--name', 'w-text', '--audience', X, '--trust-issuer', ISSUER, '--subject', SA], env)
    t.equal(text.code, 0, text.stderr)
    t.match(text.stdout, `authentication: none: JWT bearer grant with RS256 tokens of ${ISSUER} for ${SA}\n`)
    t.match(text.stdout, new RegExp(`\\(no secret: it proves itself with a token of ${ISSUER.replaceAll('.', '\\.')}\\)$`))
    t.notMatch(text.stdout, /client_secret/)
  })

  t.test('create --exchange-to, --trust-jwks-uri and --trust-alg; show and list print them', async (t) => {
    const { client_id: id } = await json(['create', '--name', 'gh', '--audience', X, '--scope', 'deploy', '--exchange-to', BILLING, '--exchange-to', PAYROLL,
      '--trust-issuer', 'https://token.actions.githubusercontent.com', '--trust-jwks-uri', 'https://token.actions.githubusercontent.com/.well-known/jwks',
      '--trust-alg', 'ES256', '--subject', 'repo:octo-org/octo-repo:ref:refs/heads/main', '--subject', 'repo:octo-org/octo-repo:environment:prod'])
    const shown = await json(['show', id])
    t.match(shown, {
      exchange_audiences: [BILLING, PAYROLL],
      trusted_issuer: 'https://token.actions.githubusercontent.com',
      trusted_jwks_uri: 'https://token.actions.githubusercontent.com/.well-known/jwks',
      trusted_subjects: ['repo:octo-org/octo-repo:ref:refs/heads/main', 'repo:octo-org/octo-repo:environment:prod'],
      trusted_alg: 'ES256'
    })
    t.equal(shown.exchange_audiences.length, 2)
    const text = await runCli(['clients', 'show', id], env)
    t.match(text.stdout, '  authentication: none: JWT bearer grant with ES256 tokens of https://token.actions.githubusercontent.com (keys at https://token.actions.githubusercontent.com/.well-known/jwks) for repo:octo-org/octo-repo:ref:refs/heads/main, repo:octo-org/octo-repo:environment:prod')
    t.match(text.stdout, `  exchanges toward: ${BILLING} ${PAYROLL}`)

    // A client with a secret may exchange too.
    const secretClient = await json(['create', '--name', 'api', '--audience', X, '--exchange-to', BILLING])
    t.match(secretClient, { token_endpoint_auth_method: 'client_secret_basic', client_secret: String })
    t.same((await json(['show', secretClient.client_id])).exchange_audiences, [BILLING])
    t.notOk('trusted_issuer' in (await json(['show', secretClient.client_id])), 'no trust for a secret client')
  })

  t.test('update --exchange-to, --no-exchange and --subject replace the lists, each change audited', async (t) => {
    const { client_id: id } = await json(['create', '--name', 'w', '--audience', X, '--trust-issuer', ISSUER, '--subject', SA])
    t.same((await json(['update', id, '--exchange-to', BILLING])).exchange_audiences, [BILLING])
    t.same((await json(['update', id, '--exchange-to', PAYROLL, '--exchange-to', BILLING])).exchange_audiences, [PAYROLL, BILLING], 'the list replaced')
    const subjects = await json(['update', id, '--subject', 'system:serviceaccount:ns:sa-v2', '--subject', 'system:serviceaccount:ns:sa-v3'])
    t.same(subjects.trusted_subjects, ['system:serviceaccount:ns:sa-v2', 'system:serviceaccount:ns:sa-v3'])
    t.same(subjects.exchange_audiences, [PAYROLL, BILLING], 'what is not given is kept')
    t.same((await json(['update', id, '--no-exchange'])).exchange_audiences, [])
    const shown = await json(['show', id])
    t.match(shown, { trusted_issuer: ISSUER, trusted_subjects: ['system:serviceaccount:ns:sa-v2', 'system:serviceaccount:ns:sa-v3'], exchange_audiences: [] })
    const text = await runCli(['clients', 'update', id, '--exchange-to', BILLING], env)
    t.match(text, { code: 0, stdout: new RegExp(`^updated\\n${id}  "w"\\n[^]*  exchanges toward: ${BILLING.replaceAll('.', '\\.')}$`) })

    const app = await build(t, { database: env })
    const events = await app.db.selectFrom('audit_events').select(['detail', 'user_agent']).where('event', '=', 'client_updated').orderBy('id').execute()
    const mine = events.filter((event) => event.detail?.client_id === id)
    t.equal(mine.length, 5)
    t.match(mine[2], { user_agent: 'authgate-cli', detail: { before: { trusted_subjects: [SA] }, after: { trusted_subjects: ['system:serviceaccount:ns:sa-v2', 'system:serviceaccount:ns:sa-v3'] } } })
    t.match(mine[3], { detail: { before: { exchange_audiences: [PAYROLL, BILLING] }, after: { exchange_audiences: [] } } })
  })

  t.test('refused with the usage: --subject without --trust-issuer; update with both --exchange-to and --no-exchange', async (t) => {
    for (const [option, value] of [['--subject', SA], ['--trust-jwks-uri', 'https://issuer.example.test/keys'], ['--trust-alg', 'ES256']] as const) {
      const res = await runCli(['clients', 'create', '--name', 'w', '--audience', X, option, value], env)
      t.match(res, { code: 1, stdout: '' }, option)
      t.match(res.stderr, /^authgate: --subject, --trust-jwks-uri and --trust-alg go with --trust-issuer\nusage: npm run clients -- <command>\n/, option)
    }
    const { client_id: id } = await json(['create', '--name', 'w', '--audience', X, '--trust-issuer', ISSUER, '--subject', SA, '--exchange-to', BILLING])
    const both = await runCli(['clients', 'update', id, '--exchange-to', PAYROLL, '--no-exchange'], env)
    t.match(both, { code: 1, stdout: '' })
    t.match(both.stderr, /^authgate: update takes --exchange-to or --no-exchange, not both\nusage: npm run clients -- <command>\n/)
    t.same((await json(['show', id])).exchange_audiences, [BILLING], 'nothing changed')
    for (const [option, value] of [['--trust-issuer', 'https://elsewhere.example.test'], ['--trust-jwks-uri', 'https://issuer.example.test/keys'], ['--trust-alg', 'ES256'], ['--name', 'renamed']] as const) {
      const res = await runCli(['clients', 'update', id, option, value], env)
      t.match(res, { code: 1, stdout: '' }, `update ${option}`)
      t.match(res.stderr, new RegExp(`^authgate: update does not change ${option}: make a new client for that\\n`), `update ${option} is refused, never ignored`)
    }
    t.match(await json(['show', id]), { name: 'w', trusted_issuer: ISSUER, trusted_alg: 'RS256', trusted_jwks_uri: null }, 'nothing changed')
    t.match(await runCli(['clients', 'create', '--name', 'w', '--audience', X, '--trust-issuer', ISSUER], env), { code: 1, stderr: /^authgate: Invalid input\.\n {2}--subject: one to 100/ }, 'no subject')
    const rotated = await runCli(['clients', 'rotate-secret', id], env)
    t.match(rotated, { code: 1, stdout: '' })
    t.match(rotated.stderr, /^authgate: Invalid input\.\n {2}--client: [0-9a-f]{32} is a workload client \(the JWT bearer grant, with a token of http:\/\/127\.0\.0\.1:1\/\): it has no secret, and is given none$/, 'rotate-secret says what the client is')
    const plain = await json(['create', '--name', 'plain', '--audience', X])
    t.match(await runCli(['clients', 'update', plain.client_id, '--subject', SA], env), { code: 1, stderr: /trusts no issuer: it has no subjects/ }, 'no subjects for a client that trusts no issuer')
  })

  t.test('a refused definition names each option as it is typed (--trust-issuer, not the field trust_issuer)', async (t) => {
    t.match(await runCli(['clients', 'create', '--name', 'w', '--audience', X, '--trust-issuer', ISSUER, '--subject', SA, '--trust-alg', 'HS256'], env), { code: 1, stderr: /^authgate: Invalid input\.\n {2}--trust-alg: "HS256" is not one of ES256/ })
    t.match(await runCli(['clients', 'create', '--name', 'w', '--audience', X, '--trust-issuer', 'http://issuer.example.test', '--subject', SA, '--trust-jwks-uri', 'http://issuer.example.test/keys'], env),
      { code: 1, stderr: /^authgate: Invalid input\.\n {2}--trust-issuer: "http:\/\/issuer\.example\.test" is not an https URL.*\n {2}--trust-jwks-uri: "http:\/\/issuer\.example\.test\/keys" is not an https URL/ })
    t.match(await runCli(['clients', 'create', '--name', 'w', '--audience', X, '--exchange-to', 'billing'], env), { code: 1, stderr: /^authgate: Invalid input\.\n {2}--exchange-to: "billing" is not an absolute URI/ })
  })
})
