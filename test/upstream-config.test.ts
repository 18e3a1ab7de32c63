import t, { type Test } from 'tap'
import { loadConfig, parseConfig } from '../src/config.ts'

// The configuration of sign-in with upstream identity providers (OIDC_PROVIDERS, OIDC_<NAME>_*,
// OIDC_RETURN_URLS): every bad value refused at start with the variable named, the presets'
// defaults. Pure: no app is started.

const GENERIC = { OIDC_PROVIDERS: 'corp', OIDC_CORP_ISSUER: 'https://idp.example.com', OIDC_CORP_CLIENT_ID: 'authgate', OIDC_CORP_CLIENT_SECRET: 'secret' }
const secretsOf = (name: string) => ({ [`OIDC_${name.toUpperCase()}_CLIENT_ID`]: 'authgate', [`OIDC_${name.toUpperCase()}_CLIENT_SECRET`]: 'secret' })

/** Whether `env` is refused with a ConfigError whose message matches `message`. */
function refuses (t: Test, env: Record<string, string>, message: RegExp, what = String(message)): void {
  t.throws(() => parseConfig(env), { name: 'ConfigError', message }, what)
}

t.test('without OIDC_PROVIDERS: no providers, the feature off', async (t) => {
  const config = parseConfig({})
  t.same(config.upstreamProviders, [])
  t.equal(config.features.upstream, false)
  t.same([...config.returnUrls], [])
})

t.test('providers with no page to return to: the service starts, and says that browser sign-ins are all refused', async (t) => {
  const warnings: string[] = []
  const env = { ...GENERIC, DB_NAME: 'memory://', SECRET_KEY: 'a-secret-key-of-at-least-thirty-two-characters' }
  await loadConfig(env, (message) => warnings.push(message))
  t.match(warnings, [/OIDC_PROVIDERS is set but OIDC_RETURN_URLS is empty: every browser sign-in with a provider is refused/])
  warnings.length = 0
  await loadConfig({ ...env, OIDC_RETURN_URLS: 'https://app.example.com/signed-in' }, (message) => warnings.push(message))
  t.same(warnings, [], 'no warning with a page listed')
})

t.test('a generic provider needs its issuer, client id and secret; its defaults trust nothing', async (t) => {
  const [corp] = parseConfig({ ...GENERIC, OIDC_RETURN_URLS: 'https://app.example.com/signed-in' }).upstreamProviders
  t.same(corp, {
    name: 'corp',
    preset: 'generic',
    issuer: 'https://idp.example.com',
    clientId: 'authgate',
    clientSecret: 'secret',
    scopes: ['openid', 'email', 'profile'],
    extraAudiences: [],
    allowedDomains: [],
    trustEmail: false,
    linkByEmail: false,
    trustAssurance: false,
    tenants: [],
    orgs: [],
    apiUrl: 'https://idp.example.com/api/v3'
  })
  const { OIDC_CORP_ISSUER: _issuer, ...noIssuer } = GENERIC
  refuses(t, noIssuer, /OIDC_CORP_ISSUER is required/)
  const { OIDC_CORP_CLIENT_ID: _id, ...noId } = GENERIC
  refuses(t, noId, /OIDC_CORP_CLIENT_ID is required/)
  const { OIDC_CORP_CLIENT_SECRET: _secret, ...noSecret } = GENERIC
  refuses(t, noSecret, /OIDC_CORP_CLIENT_SECRET is required/)
  refuses(t, { ...GENERIC, OIDC_CORP_CLIENT_SECRET: '  ' }, /OIDC_CORP_CLIENT_SECRET is required/, 'blank is missing')
  t.equal(parseConfig({ ...GENERIC, OIDC_CORP_ISSUER: 'https://idp.example.com/' }).upstreamProviders[0]!.issuer, 'https://idp.example.com', 'a trailing slash dropped')
})

t.test('an issuer is https, or http on this machine\'s loopback only', async (t) => {
  for (const issuer of ['http://idp.example.com', 'http://10.0.0.1', 'http://127.0.0.1.nip.io', 'ftp://idp.example.com', 'https://idp.example.com?x=1', 'https://idp.example.com#x', 'https://user:pw@idp.example.com', 'idp.example.com']) {
    refuses(t, { ...GENERIC, OIDC_CORP_ISSUER: issuer }, /OIDC_CORP_ISSUER must be an https URL \(http only on 127\.0\.0\.1 or localhost\)/, issuer)
  }
  for (const issuer of ['http://127.0.0.1:8080', 'http://localhost:9000/realms/x', 'https://idp.example.com/tenant']) {
    t.equal(parseConfig({ ...GENERIC, OIDC_CORP_ISSUER: issuer }).upstreamProviders[0]!.issuer, issuer)
  }
})

t.test('bad values are named: domains, tenants, orgs, flags, scopes, audiences, presets', async (t) => {
  refuses(t, { ...GENERIC, OIDC_CORP_ALLOWED_DOMAINS: 'example.com, not a domain' }, /OIDC_CORP_ALLOWED_DOMAINS must be domain names like example\.com separated by commas, not "not"/)
  refuses(t, { ...GENERIC, OIDC_CORP_ALLOWED_DOMAINS: '*.example.com' }, /OIDC_CORP_ALLOWED_DOMAINS must be domain names/)
  refuses(t, { ...GENERIC, OIDC_CORP_ALLOWED_DOMAINS: '@example.com' }, /OIDC_CORP_ALLOWED_DOMAINS must be domain names/)
  t.same(parseConfig({ ...GENERIC, OIDC_CORP_TRUST_EMAIL: 'true', OIDC_CORP_ALLOWED_DOMAINS: 'Example.COM, corp.test' }).upstreamProviders[0]!.allowedDomains, ['example.com', 'corp.test'])
  // A domain is read off a verified address: without trust in the provider's, every sign-in would be refused.
  refuses(t, { ...GENERIC, OIDC_CORP_ALLOWED_DOMAINS: 'example.com' }, /OIDC_CORP_ALLOWED_DOMAINS needs OIDC_CORP_TRUST_EMAIL=true/)

  refuses(t, { ...GENERIC, OIDC_CORP_TENANTS: '72f988bf-86f1-41af-91ab-2d7cd011db47' }, /OIDC_CORP_TENANTS is for the microsoft preset only/)
  refuses(t, { OIDC_PROVIDERS: 'microsoft', ...secretsOf('microsoft'), OIDC_MICROSOFT_TENANTS: 'contoso.onmicrosoft.com' }, /OIDC_MICROSOFT_TENANTS must be directory \(tenant\) ids/)
  refuses(t, { ...GENERIC, OIDC_CORP_ALLOWED_ORGS: 'acme' }, /OIDC_CORP_ALLOWED_ORGS is for the github preset only/)
  refuses(t, { OIDC_PROVIDERS: 'github', ...secretsOf('github'), OIDC_GITHUB_ALLOWED_ORGS: 'acme,-bad' }, /OIDC_GITHUB_ALLOWED_ORGS must be GitHub organisation logins/)
  refuses(t, { ...GENERIC, OIDC_CORP_API_URL: 'https://api.example.com' }, /OIDC_CORP_API_URL is for the github preset only/)
  refuses(t, { OIDC_PROVIDERS: 'github', ...secretsOf('github'), OIDC_GITHUB_API_URL: 'http://api.example.com' }, /OIDC_GITHUB_API_URL must be an https URL/)
  refuses(t, { OIDC_PROVIDERS: 'github', ...secretsOf('github'), OIDC_GITHUB_EXTRA_AUDIENCES: 'app' }, /OIDC_GITHUB_EXTRA_AUDIENCES is for OpenID Connect providers/)
  refuses(t, { OIDC_PROVIDERS: 'github', ...secretsOf('github'), OIDC_GITHUB_TRUST_ASSURANCE: 'true' }, /OIDC_GITHUB_TRUST_ASSURANCE is for OpenID Connect providers/)
  refuses(t, { ...GENERIC, OIDC_CORP_TRUST_EMAIL: 'yes' }, /OIDC_CORP_TRUST_EMAIL must be true or false, not "yes"/)
  refuses(t, { ...GENERIC, OIDC_CORP_SCOPES: 'email profile' }, /OIDC_CORP_SCOPES must include openid/)
  refuses(t, { ...GENERIC, OIDC_CORP_SCOPES: 'openid "quoted"' }, /OIDC_CORP_SCOPES must be scopes separated by spaces or commas/)
  refuses(t, { ...GENERIC, OIDC_CORP_PRESET: 'okta' }, /OIDC_CORP_PRESET must be one of generic, google, microsoft, github, not "okta"/)
})

t.test('LINK_BY_EMAIL needs TRUST_EMAIL: an address the provider is not believed about never links', async (t) => {
  // Catches the Auth.js allowDangerousEmailAccountLinking shape: linking by an address nobody vouched for.
  refuses(t, { ...GENERIC, OIDC_CORP_LINK_BY_EMAIL: 'true' }, /OIDC_CORP_LINK_BY_EMAIL=true needs OIDC_CORP_TRUST_EMAIL=true/)
  refuses(t, { ...GENERIC, OIDC_CORP_LINK_BY_EMAIL: 'true', OIDC_CORP_TRUST_EMAIL: 'false' }, /OIDC_CORP_LINK_BY_EMAIL=true needs OIDC_CORP_TRUST_EMAIL=true/)
  refuses(t, { OIDC_PROVIDERS: 'google', ...secretsOf('google'), OIDC_GOOGLE_TRUST_EMAIL: 'false', OIDC_GOOGLE_LINK_BY_EMAIL: 'true' }, /OIDC_GOOGLE_LINK_BY_EMAIL=true needs OIDC_GOOGLE_TRUST_EMAIL=true/)
  t.match(parseConfig({ ...GENERIC, OIDC_CORP_LINK_BY_EMAIL: 'true', OIDC_CORP_TRUST_EMAIL: 'true' }).upstreamProviders[0], { trustEmail: true, linkByEmail: true })
  t.match(parseConfig({ OIDC_PROVIDERS: 'google', ...secretsOf('google'), OIDC_GOOGLE_LINK_BY_EMAIL: 'true' }).upstreamProviders[0], { trustEmail: true, linkByEmail: true }, 'google is trusted by default')
})

t.test('unknown OIDC_ variables, bad or duplicate names are refused', async (t) => {
  refuses(t, { ...GENERIC, OIDC_CORP_CLIENTID: 'x' }, /OIDC_CORP_CLIENTID is not a setting of a provider in OIDC_PROVIDERS/, 'a misspelt setting')
  refuses(t, { ...GENERIC, OIDC_FOO_BAR: 'x' }, /OIDC_FOO_BAR is not a setting of a provider in OIDC_PROVIDERS/)
  refuses(t, { ...GENERIC, OIDC_OTHER_ISSUER: 'https://other.example.com' }, /OIDC_OTHER_ISSUER is not a setting of a provider in OIDC_PROVIDERS/, 'a provider not listed')
  refuses(t, { OIDC_GOOGLE_CLIENT_ID: 'x' }, /OIDC_GOOGLE_CLIENT_ID is not a setting/, 'with no OIDC_PROVIDERS at all')
  refuses(t, { ...GENERIC, OIDC_PROVIDERS: 'corp,CORP' }, /OIDC_PROVIDERS names corp twice/)
  refuses(t, { ...GENERIC, OIDC_PROVIDERS: 'corp,corp' }, /OIDC_PROVIDERS names corp twice/)
  refuses(t, { OIDC_PROVIDERS: 'my-idp' }, /OIDC_PROVIDERS must be names of 1 to 32 letters and digits/)
  refuses(t, { OIDC_PROVIDERS: '1corp' }, /OIDC_PROVIDERS must be names/)
})

t.test('OIDC_RETURN_URLS: absolute http(s) URLs written as a browser writes them, no fragment', async (t) => {
  for (const bad of ['/signed-in', 'app.example.com/signed-in', 'javascript:alert(1)', 'https://app.example.com/signed-in#x', 'https://app.example.com', 'https://APP.example.com/x', 'https://app.example.com/a/../b', 'ftp://app.example.com/x']) {
    refuses(t, { ...GENERIC, OIDC_RETURN_URLS: `https://app.example.com/ok,${bad}` }, /OIDC_RETURN_URLS must be absolute http\(s\) URLs without a fragment/, bad)
  }
  const config = parseConfig({ ...GENERIC, OIDC_RETURN_URLS: 'https://app.example.com/signed-in, http://localhost:5173/x?tab=1' })
  t.same([...config.returnUrls], ['https://app.example.com/signed-in', 'http://localhost:5173/x?tab=1'])
})

t.test('the presets\' defaults', async (t) => {
  const config = parseConfig({
    OIDC_PROVIDERS: 'google,microsoft,github,entra',
    ...secretsOf('google'),
    ...secretsOf('microsoft'),
    ...secretsOf('github'),
    ...secretsOf('entra'),
    OIDC_ENTRA_PRESET: 'microsoft',
    OIDC_ENTRA_ISSUER: 'https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0',
    OIDC_GITHUB_ALLOWED_ORGS: 'acme'
  })
  t.equal(config.features.upstream, true)
  const [google, microsoft, github, entra] = config.upstreamProviders
  t.match(google, { name: 'google', preset: 'google', issuer: 'https://accounts.google.com', scopes: ['openid', 'email', 'profile'], trustEmail: true, linkByEmail: false, trustAssurance: false })
  t.match(microsoft, { name: 'microsoft', preset: 'microsoft', issuer: 'https://login.microsoftonline.com/common/v2.0', trustEmail: true, tenants: [] })
  t.match(github, { name: 'github', preset: 'github', issuer: 'https://github.com', apiUrl: 'https://api.github.com', scopes: ['read:user', 'user:email', 'read:org'], trustEmail: true, orgs: ['acme'] })
  t.match(entra, { name: 'entra', preset: 'microsoft', issuer: 'https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0' })
  const ghes = parseConfig({ OIDC_PROVIDERS: 'github', ...secretsOf('github'), OIDC_GITHUB_ISSUER: 'https://github.acme.example' }).upstreamProviders[0]
  t.match(ghes, { issuer: 'https://github.acme.example', apiUrl: 'https://github.acme.example/api/v3', scopes: ['read:user', 'user:email'] }, 'GitHub Enterprise Server: the API under /api/v3')
  t.match(parseConfig({ OIDC_PROVIDERS: 'google', ...secretsOf('google'), OIDC_GOOGLE_TRUST_EMAIL: 'false' }).upstreamProviders[0], { trustEmail: false }, 'a preset\'s trust may be withdrawn')
})
