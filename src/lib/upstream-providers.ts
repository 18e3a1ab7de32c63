// The upstream identity providers of the configuration (OIDC_PROVIDERS, OIDC_<NAME>_*): what
// each is and how far it is trusted, parsed and judged once at start (src/config.ts). Pure.

/** How a provider is spoken to: OpenID Connect (discovery, ID tokens), or GitHub's OAuth 2.0 and REST API. */
export type Preset = 'generic' | 'google' | 'microsoft' | 'github'
const PRESETS: readonly Preset[] = ['generic', 'google', 'microsoft', 'github']

export interface UpstreamProvider {
  /** Its name in OIDC_PROVIDERS, lower case: the path /api/auth/oidc/<name>/…. */
  name: string
  preset: Preset
  /**
   * OpenID Connect: the issuer whose discovery document is read (Microsoft's multi-tenant one
   * publishes the template issuer https://login.microsoftonline.com/{tenantid}/v2.0). GitHub:
   * the web base URL (https://github.com, or a GitHub Enterprise Server's), which is the issuer
   * of its identities.
   */
  issuer: string
  clientId: string
  clientSecret: string
  scopes: readonly string[]
  /** The audiences an ID token from a native app may name besides the client id (id-token endpoint). */
  extraAudiences: readonly string[]
  /** Addresses of these domains only (and for Google, a Workspace `hd` of one of them); empty: any. */
  allowedDomains: readonly string[]
  /** Whether the provider's verified-address assertion is believed (Microsoft: only with xms_edov). */
  trustEmail: boolean
  /** Whether an unknown identity whose verified address is a verified local account's signs into it (linking it). */
  linkByEmail: boolean
  /** Whether the provider's `amr` saying `mfa` makes the sign-in aal2. */
  trustAssurance: boolean
  /** Microsoft: the tenants (directory ids) whose users may sign in; empty: any. */
  tenants: readonly string[]
  /** GitHub: the organisations one of which the user must belong to; empty: any. */
  orgs: readonly string[]
  /** GitHub: the REST API's base URL. */
  apiUrl: string
}

/** Each provider's settings, as OIDC_<NAME>_<SETTING>. */
export const PROVIDER_SETTINGS = ['PRESET', 'ISSUER', 'CLIENT_ID', 'CLIENT_SECRET', 'SCOPES', 'EXTRA_AUDIENCES', 'ALLOWED_DOMAINS', 'TRUST_EMAIL', 'LINK_BY_EMAIL', 'TRUST_ASSURANCE', 'TENANTS', 'ALLOWED_ORGS', 'API_URL'] as const

const NAME = /^[a-z][a-z0-9]{0,31}$/
const DOMAIN = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/
const TENANT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ORG = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$/
const SCOPE = /^[\x21\x23-\x5b\x5d-\x7e]+$/
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]'])

const PRESET_ISSUERS: Partial<Record<Preset, string>> = {
  google: 'https://accounts.google.com',
  microsoft: 'https://login.microsoftonline.com/common/v2.0',
  github: 'https://github.com'
}

/**
 * Whether an identity provider's or a trusted issuer's URL may be used: https, or http on this
 * machine's loopback (a test's provider); no query, fragment or credentials.
 */
export function isProviderUrl (value: string): boolean {
  let url
  try { url = new URL(value) } catch { return false }
  if (url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') return false
  return url.protocol === 'https:' || (url.protocol === 'http:' && LOOPBACK.has(url.hostname))
}

const list = (value: string | undefined, separator: RegExp = /[\s,]+/): string[] =>
  (value ?? '').split(separator).map((part) => part.trim()).filter(Boolean)

/**
 * The providers OIDC_PROVIDERS names, each from its OIDC_<NAME>_* variables; every bad or
 * unknown value is pushed to `problems` as a sentence naming the variable.
 */
export function parseProviders (env: Record<string, string | undefined>, problems: string[]): UpstreamProvider[] {
  const names = list(env.OIDC_PROVIDERS).map((name) => name.toLowerCase())
  const providers: UpstreamProvider[] = []
  for (const name of names) {
    if (!NAME.test(name)) {
      problems.push(`OIDC_PROVIDERS must be names of 1 to 32 letters and digits, starting with a letter, separated by commas, not ${JSON.stringify(name)}`)
      continue
    }
    if (providers.some((p) => p.name === name)) {
      problems.push(`OIDC_PROVIDERS names ${name} twice`)
      continue
    }
    const provider = parseProvider(name, env, problems)
    if (provider !== undefined) providers.push(provider)
  }
  // A setting of no provider listed, or one no provider has, is a mistake to say.
  const known = new Set(names.flatMap((name) => PROVIDER_SETTINGS.map((setting) => `OIDC_${name.toUpperCase()}_${setting}`)))
  for (const variable of Object.keys(env)) {
    if (variable.startsWith('OIDC_') && variable !== 'OIDC_PROVIDERS' && variable !== 'OIDC_RETURN_URLS' && !known.has(variable)) {
      problems.push(`${variable} is not a setting of a provider in OIDC_PROVIDERS: each provider takes OIDC_<NAME>_${PROVIDER_SETTINGS.join('|')}`)
    }
  }
  return providers
}

function parseProvider (name: string, env: Record<string, string | undefined>, problems: string[]): UpstreamProvider | undefined {
  const prefix = `OIDC_${name.toUpperCase()}_`
  const get = (setting: typeof PROVIDER_SETTINGS[number]): string | undefined => {
    const value = env[prefix + setting]?.trim()
    return value === '' ? undefined : value
  }
  const start = problems.length
  const flag = (setting: typeof PROVIDER_SETTINGS[number], fallback: boolean): boolean => {
    const value = get(setting)
    if (value === undefined) return fallback
    if (value !== 'true' && value !== 'false') problems.push(`${prefix}${setting} must be true or false, not ${JSON.stringify(value)}`)
    return value === 'true'
  }

  const presetValue = get('PRESET') ?? (PRESETS.includes(name as Preset) ? name : 'generic')
  if (!PRESETS.includes(presetValue as Preset)) problems.push(`${prefix}PRESET must be one of ${PRESETS.join(', ')}, not ${JSON.stringify(presetValue)}`)
  const preset = presetValue as Preset

  const issuer = (get('ISSUER') ?? PRESET_ISSUERS[preset])?.replace(/\/+$/, '')
  if (issuer === undefined) problems.push(`${prefix}ISSUER is required: the provider's issuer URL, whose /.well-known/openid-configuration is read`)
  else if (!isProviderUrl(issuer)) problems.push(`${prefix}ISSUER must be an https URL (http only on 127.0.0.1 or localhost) without query or fragment, not ${JSON.stringify(issuer)}`)

  const clientId = get('CLIENT_ID')
  if (clientId === undefined) problems.push(`${prefix}CLIENT_ID is required: the client id the provider gave authgate`)
  const clientSecret = get('CLIENT_SECRET')
  if (clientSecret === undefined) problems.push(`${prefix}CLIENT_SECRET is required: the client secret the provider gave authgate`)

  const github = preset === 'github'
  const defaultScopes = github ? ['read:user', 'user:email'] : ['openid', 'email', 'profile']
  const scopes = get('SCOPES') === undefined ? defaultScopes : list(get('SCOPES'))
  if (scopes.some((scope) => !SCOPE.test(scope))) problems.push(`${prefix}SCOPES must be scopes separated by spaces or commas`)
  if (!github && !scopes.includes('openid')) problems.push(`${prefix}SCOPES must include openid: an OpenID Connect sign-in needs an ID token`)

  const allowedDomains = list(get('ALLOWED_DOMAINS')).map((domain) => domain.toLowerCase())
  const badDomain = allowedDomains.find((domain) => !DOMAIN.test(domain))
  if (badDomain !== undefined) problems.push(`${prefix}ALLOWED_DOMAINS must be domain names like example.com separated by commas, not ${JSON.stringify(badDomain)}`)

  const tenants = list(get('TENANTS')).map((tenant) => tenant.toLowerCase())
  if (tenants.length > 0 && preset !== 'microsoft') problems.push(`${prefix}TENANTS is for the microsoft preset only`)
  const badTenant = tenants.find((tenant) => !TENANT.test(tenant))
  if (badTenant !== undefined) problems.push(`${prefix}TENANTS must be directory (tenant) ids like 72f988bf-86f1-41af-91ab-2d7cd011db47 separated by commas, not ${JSON.stringify(badTenant)}`)

  const orgs = list(get('ALLOWED_ORGS'))
  if (orgs.length > 0 && !github) problems.push(`${prefix}ALLOWED_ORGS is for the github preset only`)
  const badOrg = orgs.find((org) => !ORG.test(org))
  if (badOrg !== undefined) problems.push(`${prefix}ALLOWED_ORGS must be GitHub organisation logins separated by commas, not ${JSON.stringify(badOrg)}`)

  const extraAudiences = list(get('EXTRA_AUDIENCES'))
  if (extraAudiences.length > 0 && github) problems.push(`${prefix}EXTRA_AUDIENCES is for OpenID Connect providers: GitHub issues no ID tokens`)

  // GitHub.com's API has a host of its own; a GitHub Enterprise Server's is under /api/v3.
  const apiUrl = (get('API_URL') ?? (issuer === 'https://github.com' ? 'https://api.github.com' : `${issuer ?? ''}/api/v3`)).replace(/\/+$/, '')
  if (get('API_URL') !== undefined && !github) problems.push(`${prefix}API_URL is for the github preset only`)
  if (github && !isProviderUrl(apiUrl)) problems.push(`${prefix}API_URL must be an https URL (http only on 127.0.0.1 or localhost), not ${JSON.stringify(apiUrl)}`)

  // Google and GitHub (its verified addresses only) are believed about addresses by default;
  // Microsoft only for an address its token marks as a domain the tenant owns (xms_edov).
  const trustEmail = flag('TRUST_EMAIL', preset !== 'generic')
  const linkByEmail = flag('LINK_BY_EMAIL', false)
  if (linkByEmail && !trustEmail) problems.push(`${prefix}LINK_BY_EMAIL=true needs ${prefix}TRUST_EMAIL=true: an address the provider is not believed about never links an account`)
  // Outside Google's hd, a domain is read off a verified address, which only a trusted provider gives.
  if (allowedDomains.length > 0 && preset !== 'google' && !trustEmail) problems.push(`${prefix}ALLOWED_DOMAINS needs ${prefix}TRUST_EMAIL=true: a domain is read off an address the provider is believed about, so without it every sign-in would be refused`)
  const trustAssurance = flag('TRUST_ASSURANCE', false)
  if (trustAssurance && github) problems.push(`${prefix}TRUST_ASSURANCE is for OpenID Connect providers: GitHub says nothing of how its user signed in`)

  if (problems.length > start) return undefined
  return {
    name,
    preset,
    issuer: issuer!,
    clientId: clientId!,
    clientSecret: clientSecret!,
    scopes: [...new Set([...scopes, ...(github && orgs.length > 0 ? ['read:org'] : [])])],
    extraAudiences,
    allowedDomains,
    trustEmail,
    linkByEmail,
    trustAssurance,
    tenants,
    orgs,
    apiUrl
  }
}

/**
 * The pages an upstream sign-in may send the browser back to (OIDC_RETURN_URLS): absolute
 * http(s) URLs without a fragment (the answer's goes there), compared whole, never as a prefix.
 */
export function parseReturnUrls (value: string, problems: string[]): string[] {
  const urls = list(value, /,/)
  for (const url of urls) {
    let parsed
    try { parsed = new URL(url) } catch {}
    if (parsed === undefined || !/^https?:$/.test(parsed.protocol) || parsed.hash !== '' || url.includes('#') || parsed.href !== url) {
      problems.push(`OIDC_RETURN_URLS must be absolute http(s) URLs without a fragment, written as a browser writes them (https://app.example.com/signed-in), separated by commas, not ${JSON.stringify(url)}`)
      break
    }
  }
  return urls
}
