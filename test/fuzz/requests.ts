import { createHmac } from 'node:crypto'
import type { Random } from './random.ts'

// The requests the fuzz test sends: well-framed ones with bad content (sent through node:http)
// and malformed HTTP (sent as raw bytes on a socket of their own).

/** A request node:http can frame: any method token, path, headers (duplicates kept, in order) and body. */
export interface HttpCase {
  kind: 'http'
  what: string
  method: string
  path: string
  headers: Array<[string, string]>
  body: Buffer
}

/** Bytes on a new connection, which the client half-closes after writing them. */
export interface RawCase {
  kind: 'raw'
  what: string
  bytes: Buffer
}

export type FuzzCase = HttpCase | RawCase

/** What a run knows before it starts: a real user, its tokens, and the service's names. */
export interface Secrets {
  username: string
  email: string
  password: string
  access: string
  refresh: string
  sid: string
  cookieNames: { access: string, refresh: string }
  introspection: { id: string, secret: string }
}

const b64u = (value: string | Buffer): string => Buffer.from(value).toString('base64url')
const ALNUM = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
const PRINTABLE = ALNUM + ' !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'

/** Strings that break naive code: encodings, surrogates, normalisation, control bytes. */
const EDGE_STRINGS = [
  '', ' ', '\u0000', 'a\u0000b', '\ud800', 'x\udfffy', '\ud83d\ude00', '\uffff', '\ufeff', '\u202e', 'e\u0301',
  '\ufb01', '\uff41\uff44\uff4d\uff49\uff4e', 'Ⅻ', 'İ', 'ß', 'admin', 'ADMIN', 'root', '../../etc/passwd',
  "' OR 1=1 --", '"; drop table users; --', '$' + '{jndi:ldap://x}', '{{7*7}}', '<script>', '%00', '%zz', 'null',
  'undefined', 'NaN', '__proto__', 'constructor', 'toString', 'a@b', '@', 'a@', '@b.c', 'a@b.c', 'x'.repeat(151),
  '\r\nX-Injected: 1', '\t', '\u2028', '\u0085', 'é'.repeat(40), '😀'.repeat(19)
]

export function randomText (r: Random, max = 64): string {
  switch (r.int(0, 4)) {
    case 0: return r.string(r.size(max), ALNUM)
    case 1: return r.string(r.size(max), PRINTABLE)
    case 2: return r.pick(EDGE_STRINGS)
    case 3: {
      // Any code units, lone surrogates included.
      let out = ''
      for (let i = r.size(max); i > 0; i--) out += String.fromCharCode(r.int(0, 0xffff))
      return out
    }
    default: return r.pick(EDGE_STRINGS) + r.string(r.size(max), ALNUM) + r.pick(EDGE_STRINGS)
  }
}

// ---------------------------------------------------------------------------------- tokens

function flipBit (r: Random, text: string): string {
  if (text.length === 0) return 'x'
  const i = r.int(0, text.length - 1)
  const bit = 1 << r.int(0, 6)
  return text.slice(0, i) + String.fromCharCode((text.charCodeAt(i) ^ bit) & 0x7f || 0x41) + text.slice(i + 1)
}

function jwt (header: object, payload: object | string, signature: string): string {
  return `${b64u(JSON.stringify(header))}.${typeof payload === 'string' ? payload : b64u(JSON.stringify(payload))}.${signature}`
}

/** A token: the real ones, mutations of them, forgeries and junk. */
export function token (r: Random, s: Secrets): string {
  const real = r.chance(0.5) ? s.access : s.refresh
  const [h = '', p = '', sig = ''] = real.split('.')
  const header = JSON.parse(Buffer.from(h, 'base64url').toString()) as Record<string, unknown>
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>
  const other = (real === s.access ? s.refresh : s.access).split('.')
  switch (r.int(0, 21)) {
    case 0: return s.access
    case 1: return s.refresh
    case 2: return flipBit(r, real)
    case 3: return `${h}.${p}.${flipBit(r, sig)}`
    case 4: return `${other[0]}.${p}.${sig}`
    case 5: return `${h}.${other[1]}.${sig}`
    case 6: return `${h}.${p}.${other[2]}`
    case 7: return real.slice(0, r.int(0, real.length - 1))
    case 8: return jwt({ ...header, alg: 'none' }, claims, r.pick(['', sig, 'e30']))
    case 9: return jwt({ ...header, alg: r.pick(['HS256', 'HS512', 'RS256', 'ES512', 'EdDSA', 'NONE', 'nOnE', '']) }, claims,
      createHmac('sha256', r.pick(['', 'secret', JSON.stringify(header)])).update(`${h}.${p}`).digest('base64url'))
    case 10: return jwt({ ...header, kid: r.pick(['', 'unknown', '../../../dev/null', "' or 1=1 --", 'x'.repeat(5000), 1, null, [], {}]) }, p, sig)
    case 11: return jwt({ ...header, jku: 'http://127.0.0.1:1/jwks', x5u: 'http://127.0.0.1:1/x5u', jwk: { kty: 'oct', k: 'AA' } }, p, sig)
    case 12: return jwt(header, { ...claims, [r.pick(['token_type', 'user_id', 'sid', 'sub', 'exp', 'iat', 'iss', 'aud', 'jti'])]: r.pick([null, 'refresh', 'access', -1, Infinity, 2 ** 53, '1', [], {}, 'x'.repeat(300)]) }, sig)
    case 13: return jwt(header, r.pick(['', 'e30', b64u('[]'), b64u('null'), b64u('{"__proto__":{"admin":true}}'), b64u('{'), '!!!']), sig)
    case 14: return `${h}.${p}`
    case 15: return `${real}.${sig}`
    case 16: return r.pick(['', '.', '..', '...', 'null', 'undefined', 'Bearer', 'a.b.c', '=.=.=', '\u00e9.\u00e9.\u00e9'])
    case 17: return `${h}.${'A'.repeat(r.int(1, 12000))}.${sig}`
    case 18: return randomText(r, 200)
    case 19: return b64u(r.bytes(r.size(600)))
    case 20: return real + r.pick([' ', '\t', '%20', '=', '==', '\u00a0', ','])
    default: return real.toUpperCase()
  }
}

// ------------------------------------------------------------------------------------ paths

const ROUTES: ReadonlyArray<[string, string]> = [
  ['POST', '/api/auth/register'], ['POST', '/api/auth/login'], ['POST', '/api/token'],
  ['POST', '/api/token/refresh'], ['POST', '/api/token/verify'], ['POST', '/api/token/blacklist'],
  ['POST', '/api/token/introspect'], ['POST', '/api/auth/logout'], ['POST', '/api/auth/password'],
  ['GET', '/api/detail'], ['GET', '/api/auth/sessions'], ['DELETE', '/api/auth/sessions/:id'],
  ['GET', '/api/auth/check'], ['GET', '/.well-known/jwks.json'], ['GET', '/.well-known/openid-configuration'],
  ['GET', '/health/live'], ['GET', '/health/ready'], ['GET', '/metrics'], ['GET', '/docs'], ['GET', '/docs/json'],
  ['POST', '/api/auth/passkeys/authentication/options'], ['POST', '/api/auth/passkeys/authentication/verify'],
  ['POST', '/api/auth/passkeys/registration/options'], ['POST', '/api/auth/passkeys/registration/verify'],
  ['GET', '/api/auth/passkeys'], ['PATCH', '/api/auth/passkeys/:id'], ['DELETE', '/api/auth/passkeys/:id']
]

const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'PROPFIND', 'MKCOL', 'LOCK', 'SEARCH',
  'PURGE', 'REPORT', 'MOVE', 'COPY', 'TRACE', 'BREW', 'FOO', 'X-CUSTOM', 'QUERY']

const ODD_PATHS = [
  '/', '//', '/api', '/api/', '/api/auth', '/api//token', '//api/token', '/api/token//', '/api/auth/../detail',
  '/api/%2e%2e/detail', '/api/auth/%2e%2e/%2e%2e/etc/passwd', '/../../../../etc/passwd', '/%00', '/api/detail%00',
  '/api/detail%2f', '/api/%64etail', '/API/DETAIL', '/api/Detail', '/.well-known/', '/.well-known/%2e%2e/',
  '/.well-known/jwks.json.bak', '/health', '/health/', '/health/live/x', '/%', '/%zz', '/%c0%af', '/%ff%fe',
  '/\u00e9', '/api/auth/sessions/%20', '/api/auth/sessions/..%2f', '/index.php', '/.env', '/.git/config',
  '/favicon.ico', '/api/token/refresh/extra', '/api/auth/register;jsessionid=1', '/*', '/api/token/introspect/..',
  '/api/token?', '/api/token#frag', '/docs/static/../json'
]

const QUERIES = [
  'scope=others', 'scope=global', 'scope=current', 'scope=GLOBAL', 'scope=', 'scope', 'scope=others&scope=global',
  'scope[]=others', 'scope[x]=1', 'scope=%zz', 'scope=%00', '%00=%00', 'a=1&a=2&a=3', '=&=&&', '__proto__[x]=1',
  'constructor[prototype][x]=1', 'token=x', 'access=x', 'x=' + 'y'.repeat(3000), '?', '&', ';', 'scope=oth%65rs'
]

function sessionId (r: Random, s: Secrets): string {
  return r.pick([s.sid, s.sid.toUpperCase(), '00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
    'not-a-uuid', '1', '-1', '%00', '%zz', 'x'.repeat(r.int(190, 400)), `${s.sid}x`, `{${s.sid}}`, "' or 1=1 --",
    '6f1c2b1e-9d3a-4c61-8f5e-2a7b9c0d1e2f'])
}

/** A path: one of the routes (maybe with a slash, a query, a change of case), or an odd one. */
export function path (r: Random, s: Secrets, route?: string): string {
  let out = route ?? (r.chance(0.8) ? r.pick(ROUTES)[1] : r.pick(ODD_PATHS))
  if (out.includes(':id')) out = out.replace(':id', sessionId(r, s))
  if (r.chance(0.15)) out += '/'
  if (r.chance(0.05)) out = out.replace(/\//g, () => r.pick(['/', '//', '/./']))
  if (r.chance(0.2)) out += `?${r.pick(QUERIES)}${r.chance(0.3) ? `&${r.pick(QUERIES)}` : ''}`
  if (r.chance(0.03)) out = `${out}${'/a'.repeat(r.int(100, 3000))}`
  if (r.chance(0.03)) out = '/' + r.string(r.int(1, 40), ALNUM + '%./-_~!$&\'()*+,;=:@')
  return out
}

// ----------------------------------------------------------------------------------- bodies

const FIELDS: Record<string, string[]> = {
  '/api/auth/register': ['username', 'email', 'password'],
  '/api/auth/login': ['identifier', 'password'],
  '/api/token': ['username', 'password'],
  '/api/token/refresh': ['refresh'],
  '/api/token/blacklist': ['refresh'],
  '/api/token/verify': ['token'],
  '/api/token/introspect': ['token', 'token_type_hint'],
  '/api/auth/password': ['current_password', 'new_password'],
  '/api/auth/passkeys/authentication/options': ['mfa_token'],
  '/api/auth/passkeys/authentication/verify': ['challenge_id', 'credential', 'mfa_token'],
  '/api/auth/passkeys/registration/verify': ['challenge_id', 'credential', 'name'],
  '/api/auth/passkeys/:id': ['name']
}

function goodValue (r: Random, s: Secrets, field: string): unknown {
  switch (field) {
    case 'username': return r.chance(0.3) ? s.username : `fz${r.string(r.int(1, 12), ALNUM)}`
    case 'email': return r.chance(0.3) ? s.email : `fz${r.string(r.int(1, 12), ALNUM)}@example.com`
    case 'identifier': return r.pick([s.username, s.email, s.username.toUpperCase(), `${s.username}x`])
    case 'password': case 'current_password': return r.chance(0.5) ? s.password : 'correct horse battery staple'
    case 'new_password': return r.chance(0.5) ? s.password : `another ${r.string(12, ALNUM)} phrase`
    case 'refresh': case 'token': return token(r, s)
    case 'token_type_hint': return r.pick(['access_token', 'refresh_token', 'other'])
    case 'challenge_id': case 'mfa_token': return b64u(r.bytes(32))
    case 'name': return randomText(r, 64)
    // A WebAuthn answer's shape (the schemas of both ceremonies), its bytes random.
    case 'credential': {
      const id = b64u(r.bytes(r.int(16, 64)))
      const part = (): string => b64u(r.bytes(r.int(1, 300)))
      return {
        id,
        rawId: id,
        type: 'public-key',
        response: { clientDataJSON: part(), attestationObject: part(), authenticatorData: part(), signature: part(), ...(r.chance(0.5) ? { userHandle: part() } : {}) },
        clientExtensionResults: {}
      }
    }
    default: return randomText(r)
  }
}

function nested (r: Random, depth: number): string {
  const open = r.pick(['[', '{"a":'])
  const close = open === '[' ? ']' : '}'
  return open.repeat(depth) + '1' + close.repeat(depth)
}

/** A JSON value of the wrong kind, or the right kind gone wrong. */
function badValue (r: Random, s: Secrets): unknown {
  switch (r.int(0, 9)) {
    case 0: return r.pick([null, true, false, 0, -1, 1.5, 2 ** 53 + 1, -0])
    case 1: return [randomText(r)]
    case 2: return { value: randomText(r) }
    case 3: return randomText(r, 300)
    case 4: return 'x'.repeat(r.pick([151, 255, 256, 257, 1000, 5000]))
    case 5: return r.pick(EDGE_STRINGS)
    case 6: return token(r, s)
    case 7: return `${'é'.repeat(r.int(20, 80))}`
    case 8: return r.pick(['\ud800', '\udc00', 'a\ud800b', '\u0000', 'pass\u0000word'])
    default: return ''
  }
}

/** Raw JSON text for what JSON.stringify cannot make: big numbers, duplicates, escapes, poison keys. */
function jsonText (r: Random, fields: string[], values: Record<string, unknown>): string {
  const entries = Object.entries(values).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v) ?? 'null'}`)
  const field = fields.length > 0 ? r.pick(fields) : 'x'
  switch (r.int(0, 9)) {
    case 0: entries.push(`${JSON.stringify(field)}:${r.pick(['1e309', '-1e309', '1e-400', '123456789012345678901234567890', '-0', '0.1e1'])}`); break
    case 1: entries.push(`${JSON.stringify(field)}:${JSON.stringify(values[field] ?? 'dup')}`, `${JSON.stringify(field)}:"second"`); break
    case 2: entries.push(`"__proto__":${r.pick(['{"admin":true}', 'null', '[]', '1'])}`); break
    case 3: entries.push(`"constructor":${r.pick(['{"prototype":{"admin":true}}', '{}', '"x"'])}`); break
    case 4: entries.push(`${JSON.stringify(field)}:"${r.pick(['\\ud800', '\\udfff\\ud800', '\\u0000', '\\uDEAD', '\\/', '\\x41', '\\u00', '\\'])}"`); break
    case 5: entries.push(`${JSON.stringify(field)}:${nested(r, r.int(10, 7000))}`); break
    case 6: entries.push(`"extra":${JSON.stringify(randomText(r))}`); break
    case 7: entries.push(`${JSON.stringify(`${field}\u0000`)}:"x"`); break
    case 8: entries.push(`${JSON.stringify(field.toUpperCase())}:"x"`); break
    default: break
  }
  return `{${entries.join(',')}}`
}

/** A body for `route`: valid-ish JSON with mutated fields, broken JSON, forms, multipart, bytes. */
export function body (r: Random, s: Secrets, route: string): { text: Buffer, contentType?: string } {
  const fields = FIELDS[route.split('?')[0]?.replace(/\/$/, '') ?? ''] ?? r.pick(Object.values(FIELDS))
  const values: Record<string, unknown> = {}
  for (const field of fields) {
    if (r.chance(0.1)) continue
    values[field] = r.chance(0.75) ? goodValue(r, s, field) : badValue(r, s)
  }
  const json = JSON.stringify(values)
  const first = fields[0] ?? 'x'
  const pick = r.int(0, 19)
  if (pick < 7) return { text: Buffer.from(json) }
  if (pick < 11) return { text: Buffer.from(jsonText(r, fields, values)) }
  switch (pick) {
    case 11: return { text: Buffer.from(json.slice(0, r.int(0, json.length - 1))) }
    case 12: return {
      text: Buffer.from(r.pick(['', ' ', 'null', 'true', '0', '"x"', '[]', '[{}]', '{}', '{', '}', '{"a":}', "{'a':1}", '{"a":1,}',
        '{"a":NaN}', '{"a":Infinity}', '{"a":undefined}', '/*c*/{}', '{}{}', '{} x', '\ufeff{}', '{"a":"\n"}', '\u0000']))
    }
    // Bytes that are not UTF-8, inside the JSON or instead of it.
    case 13: return { text: Buffer.concat([Buffer.from(json.slice(0, json.length >> 1)), r.bytes(r.int(1, 8)), Buffer.from(json.slice(json.length >> 1))]) }
    case 14: return { text: Buffer.from(`{"${first}":"\xc3\x28\xff\xfe\xed\xa0\x80"}`, 'latin1') }
    // Over the 16 KiB body limit.
    case 15: return { text: Buffer.from(`{"${first}":"${'a'.repeat(r.int(16 * 1024 - 40, 40 * 1024))}"}`) }
    case 16: return {
      text: Buffer.from(new URLSearchParams(Object.entries(values).map(([k, v]): [string, string] => [k, String(v)])).toString() +
        r.pick(['', '&&', '&=', '&a', '&token=x', '%zz']))
    }
    case 17: {
      const boundary = r.pick(['x', 'boundary', '', '-'.repeat(100)])
      const text = `--${boundary}\r\nContent-Disposition: form-data; name="${first}"\r\n\r\n${String(values[first] ?? 'v')}\r\n--${boundary}--\r\n`
      return { text: Buffer.from(text), contentType: `multipart/form-data; boundary=${boundary}` }
    }
    case 18: return { text: r.bytes(r.size(4000)) }
    default: return { text: Buffer.from(json, r.pick(['utf16le', 'latin1', 'base64'] as const)) }
  }
}

// ---------------------------------------------------------------------------------- headers

const CONTENT_TYPES = [
  'application/json', 'application/json', 'application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON',
  'application/json;charset=UTF-8', 'application/json; charset=latin1', 'application/json; charset=utf-16',
  'application/json ; foo=bar', 'application/json; charset="utf-8"', 'application/json;;', 'application/json, text/plain',
  'application/jsonx', 'application/problem+json', 'application/vnd.api+json', 'text/json', 'text/plain', 'text/html',
  'application/x-www-form-urlencoded', 'application/x-www-form-urlencoded; charset=utf-8', 'multipart/form-data',
  'multipart/form-data; boundary=x', '*/*', '', ' ', 'json', 'application/', '/json', 'application/json\u00e9',
  'application/octet-stream', 'application/xml', 'application/json; charset=' + 'x'.repeat(500)
]

/** A header value node:http will send: no CR, LF or NUL, other bytes as Latin-1. */
function headerSafe (value: string): string {
  let out = ''
  for (const ch of value) {
    const code = ch.codePointAt(0) ?? 0x3f
    out += code === 9 || (code >= 0x20 && code <= 0x7e) || (code >= 0x80 && code <= 0xff) ? ch : '?'
  }
  return out
}

function authorization (r: Random, s: Secrets): string {
  const basic = (id: string, secret: string): string => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`
  switch (r.int(0, 11)) {
    case 0: case 1: case 2: return `Bearer ${token(r, s)}`
    case 3: return `${r.pick(['bearer', 'BEARER', 'Bearer  ', 'Bearer\t', 'Token', 'JWT', 'Bearer:'])} ${token(r, s)}`
    case 4: return r.pick(['Bearer', 'Bearer ', 'Basic', 'Basic ', '', ' ', 'Bearer null', 'Bearer undefined', 'Negotiate abc'])
    case 5: return basic(s.introspection.id, s.introspection.secret)
    case 6: return basic(r.pick([s.introspection.id, 'other', '', ':', 'é']), r.pick([s.introspection.secret.slice(1), '', randomText(r), s.introspection.secret + 'x']))
    case 7: return `Basic ${r.pick(['!!!', '====', 'e30', Buffer.from('nocolon').toString('base64'), Buffer.from('\u0000:\u0000').toString('base64'), b64u(r.bytes(r.size(100)))])}`
    case 8: return `Bearer ${'a'.repeat(r.int(4000, 15000))}`
    case 9: return `Bearer ${s.access}, Bearer ${s.refresh}`
    case 10: return `Bearer ${s.access} ${r.string(r.int(1, 20), ALNUM)}`
    default: return randomText(r, 100)
  }
}

function cookie (r: Random, s: Secrets): string {
  const { access, refresh } = s.cookieNames
  const parts: string[] = []
  for (let i = r.int(1, 4); i > 0; i--) {
    switch (r.int(0, 9)) {
      case 0: case 1: parts.push(`${access}=${token(r, s)}`); break
      case 2: case 3: parts.push(`${refresh}=${token(r, s)}`); break
      case 4: parts.push(`${r.pick(['access_token', 'refresh_token', '__Host-refresh_token', '__Secure-access_token', access.toLowerCase(), ` ${access}`])}=${token(r, s)}`); break
      case 5: parts.push(`${r.pick([access, refresh])}="${token(r, s)}"`); break
      case 6: parts.push(`${r.pick([access, refresh])}=${Buffer.from(token(r, s)).toString('hex').replace(/../g, '%$&')}%zz`); break
      case 7: parts.push(r.pick(['', ';', '=', '==', 'a', 'a=', '=b', '%zz=%zz', '__proto__=1', 'constructor=x', `${access}`])); break
      case 8: parts.push(`${r.string(r.int(1, 10), ALNUM)}=${r.string(r.size(5000), ALNUM)}`); break
      default: parts.push(`${randomText(r, 30)}=${randomText(r, 60)}`)
    }
  }
  return parts.join(r.pick(['; ', ';', ' ; ', ',']))
}

/** Headers for one request: credentials, cookies, proxies' headers, negotiation, junk. */
export function headers (r: Random, s: Secrets, contentType: string | undefined): Array<[string, string]> {
  const out: Array<[string, string]> = []
  if (r.chance(0.97)) out.push(['Host', r.chance(0.9) ? '127.0.0.1' : headerSafe(randomText(r, 60))])
  if (contentType !== undefined) out.push(['Content-Type', contentType])
  else if (r.chance(0.5)) out.push(['Content-Type', 'application/json'])
  else if (r.chance(0.7)) out.push(['Content-Type', r.pick(CONTENT_TYPES)])
  if (r.chance(0.5)) out.push(['Authorization', headerSafe(authorization(r, s))])
  if (r.chance(0.05)) out.push(['Authorization', headerSafe(authorization(r, s))])
  if (r.chance(0.35)) out.push(['Cookie', headerSafe(cookie(r, s))])
  if (r.chance(0.05)) out.push(['Cookie', headerSafe(cookie(r, s))])
  if (r.chance(0.1)) out.push(['X-Forwarded-For', r.pick(['1.2.3.4', '::1', 'unknown', '1.2.3.4, 5.6.7.8', '999.999.999.999', '', '127.0.0.1'.repeat(200), headerSafe(randomText(r))])])
  if (r.chance(0.05)) out.push(['X-Forwarded-Proto', r.pick(['https', 'http', 'gopher', ''])])
  if (r.chance(0.05)) out.push(['X-Forwarded-Host', headerSafe(randomText(r))])
  if (r.chance(0.1)) out.push(['X-Request-Id', r.pick(['abc', '', 'x'.repeat(500), '\u00e9', headerSafe(randomText(r))])])
  if (r.chance(0.15)) out.push(['Accept', r.pick(['*/*', 'application/json', 'text/html', 'application/problem+json', '', 'x/y;q=abc', 'application/json;q=0', headerSafe(randomText(r))])])
  if (r.chance(0.05)) out.push(['Accept-Encoding', r.pick(['gzip', 'br', 'deflate', 'identity;q=0', '*;q=0', 'zstd', 'x'])])
  if (r.chance(0.05)) out.push(['Content-Encoding', r.pick(['gzip', 'br', 'deflate', 'identity', 'x'])])
  if (r.chance(0.08)) out.push(['Origin', r.pick(['http://evil.example', 'null', 'http://localhost:5173', '', headerSafe(randomText(r))])])
  if (r.chance(0.04)) out.push(['Access-Control-Request-Method', r.pick(['POST', 'GET', 'DELETE', 'x'])])
  if (r.chance(0.04)) out.push(['Access-Control-Request-Headers', r.pick(['content-type', 'authorization', 'x, y', ''])])
  if (r.chance(0.05)) out.push(['If-None-Match', r.pick(['*', '"x"', 'W/"x"', ''])])
  if (r.chance(0.05)) out.push(['If-Modified-Since', r.pick(['Thu, 01 Jan 1970 00:00:00 GMT', 'yesterday', ''])])
  if (r.chance(0.03)) out.push(['Range', r.pick(['bytes=0-1', 'bytes=-1', 'bytes=9-1', 'x'])])
  if (r.chance(0.05)) out.push(['User-Agent', r.chance(0.5) ? 'x'.repeat(r.int(200, 6000)) : headerSafe(randomText(r))])
  if (r.chance(0.03)) out.push(['Expect', '100-continue'])
  if (r.chance(0.03)) out.push(['Connection', r.pick(['close', 'keep-alive', 'Keep-Alive, x-foo', 'TE'])])
  if (r.chance(0.05)) out.push([r.string(r.int(1, 30), ALNUM + '-_.!#$%&\'*+^`|~'), headerSafe(randomText(r, 100))])
  return out
}

/** A well-framed request with bad content. */
export function httpCase (r: Random, s: Secrets): HttpCase {
  const onRoute = r.chance(0.85)
  const [routeMethod, route] = r.pick(ROUTES)
  const target = onRoute ? path(r, s, route) : path(r, s)
  const method = r.chance(0.75) && onRoute ? routeMethod : r.pick(METHODS)
  const hasBody = method === 'POST' ? r.chance(0.9) : r.chance(0.1)
  const made = hasBody ? body(r, s, route) : { text: Buffer.alloc(0), contentType: undefined }
  const list = headers(r, s, made.contentType)
  if (made.text.length > 0 || r.chance(0.5)) list.push(['Content-Length', String(made.text.length)])
  return { kind: 'http', what: `${method} ${route}`, method, path: target, headers: list, body: made.text }
}

// --------------------------------------------------------------------------------- raw HTTP

function serialize (c: HttpCase, version = 'HTTP/1.1'): Buffer {
  const head = `${c.method} ${c.path} ${version}\r\n${c.headers.map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`
  return Buffer.concat([Buffer.from(head, 'latin1'), c.body])
}

function simple (target = '/health/live', extra = ''): string {
  return `GET ${target} HTTP/1.1\r\nHost: a\r\n${extra}\r\n`
}

function chunked (r: Random): string {
  const json = '{"identifier":"x","password":"y"}'
  const head = 'POST /api/auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n'
  const te = r.pick(['chunked', 'Chunked', 'chunked, chunked', 'gzip, chunked', 'chunked, gzip', 'identity', 'xchunked',
    ' chunked', 'chunked\t', 'chunk', 'identity, chunked', 'chunked;q=1'])
  const frame = r.pick([
    `${json.length.toString(16)}\r\n${json}\r\n0\r\n\r\n`,
    `zz\r\n${json}\r\n0\r\n\r\n`,
    `ffffffffffffffffffff\r\n${json}\r\n0\r\n\r\n`,
    `-1\r\n${json}\r\n0\r\n\r\n`,
    `${json.length.toString(16)};ext=1;q="x"\r\n${json}\r\n0\r\n\r\n`,
    `${json.length.toString(16)}\r\n${json}0\r\n\r\n`,
    `${(json.length + 5).toString(16)}\r\n${json}\r\n0\r\n\r\n`,
    `${json.length.toString(16)}\r\n${json}\r\n0\r\nX-Trailer: 1\r\n\r\n`,
    `${json.length.toString(16)}\n${json}\n0\n\n`,
    `${json.length.toString(16)}\r\n${json}\r\n`,
    `${json.length.toString(16)} \r\n${json}\r\n0\r\n\r\n`,
    `0x${json.length.toString(16)}\r\n${json}\r\n0\r\n\r\n`,
    '4000\r\n' + 'a'.repeat(0x4000) + '\r\n4000\r\n' + 'a'.repeat(0x4000) + '\r\n0\r\n\r\n'
  ])
  const cl = r.pick(['', `Content-Length: ${json.length}\r\n`, 'Content-Length: 0\r\n'])
  return `${head}${cl}Transfer-Encoding: ${te}\r\n${r.chance(0.2) ? 'Transfer-Encoding: chunked\r\n' : ''}\r\n${frame}`
}

function contentLength (r: Random): string {
  const json = '{"token":"x"}'
  const value = r.pick(['-1', 'abc', '1e3', '+13', ' 13', '13 13', '13,13', '0x0d', '99999999999999999999', '13.0', '', '013', `${json.length}`, '5', '100'])
  const second = r.chance(0.3) ? `Content-Length: ${r.pick(['13', '14', '0', value])}\r\n` : ''
  return `POST /api/token/verify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: ${value}\r\n${second}\r\n${json}`
}

const TEMPLATES: Array<(r: Random, s: Secrets) => string | Buffer> = [
  // Request lines.
  () => 'GET\r\n\r\n',
  () => 'GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n',
  (r) => `GET / HTTP/${r.pick(['9.9', '1.2', '2.0', '0.9', '1', '1.1.1', 'x'])}\r\nHost: a\r\n\r\n`,
  () => 'GET /health/live HTTP/1.1\nHost: a\n\n',
  () => ' GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n',
  () => 'GET  /health/live  HTTP/1.1\r\nHost: a\r\n\r\n',
  (r) => `${r.pick(['get', 'post', 'Get', 'BREW', 'FOO', 'G\u00e9T', 'GET\u0000', 'M-SEARCH', 'PRI', 'SOURCE', 'QUERY'])} /health/live HTTP/1.1\r\nHost: a\r\n\r\n`,
  () => 'GET /health/live\r\n\r\n',
  () => 'GET health/live HTTP/1.1\r\nHost: a\r\n\r\n',
  () => 'GET http://127.0.0.1/health/live HTTP/1.1\r\nHost: a\r\n\r\n',
  () => 'GET * HTTP/1.1\r\nHost: a\r\n\r\n',
  () => 'OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n',
  () => 'GET /health/live?\u0000 HTTP/1.1\r\nHost: a\r\n\r\n',
  (r) => `GET /${'a'.repeat(r.int(8000, 40000))} HTTP/1.1\r\nHost: a\r\n\r\n`,
  () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
  () => 'CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n',
  // Header syntax.
  () => 'GET /health/live HTTP/1.1\r\nHost a\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\n Host: a\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost : a\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHo st: a\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost: a\r\nX\u0000: 1\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost: a\r\nX-A: 1\u0000 2\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
  () => 'GET /health/live HTTP/1.1\r\nHost: a, b\r\n\r\n',
  (r) => simple('/health/live', `X-Big: ${'a'.repeat(r.int(16 * 1024, 40 * 1024))}\r\n`),
  (r) => simple('/health/live', Array.from({ length: r.int(100, 3000) }, (_, i) => `X-H${i}: ${i}\r\n`).join('')),
  (r) => simple('/api/detail', `Authorization: Bearer ${'a'.repeat(r.int(16 * 1024, 20 * 1024))}\r\n`),
  (r) => Buffer.concat([Buffer.from('GET /health/live HTTP/1.1\r\nHost: a\r\nX-Bytes: '), r.bytes(r.int(1, 40)).map((b) => b === 10 || b === 13 ? 0x80 : b), Buffer.from('\r\n\r\n')]),
  (r) => Buffer.concat([Buffer.from('GET /health/'), r.bytes(r.int(1, 10)), Buffer.from(' HTTP/1.1\r\nHost: a\r\n\r\n')]),
  () => Buffer.from('GET /\xe9\xff HTTP/1.1\r\nHost: \xe9\r\n\r\n', 'latin1'),
  // Framing.
  chunked,
  contentLength,
  () => 'POST /api/token/verify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"token":',
  () => 'POST /api/token/verify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{"token":"x"}',
  (r) => `POST /api/auth/register HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: ${r.int(16 * 1024 + 1, 1e9)}\r\n\r\n{"username":`,
  // Expectations and protocol switches.
  () => 'POST /api/token/verify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 13\r\nExpect: 100-continue\r\n\r\n{"token":"x"}',
  (r) => `POST /api/token/verify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 13\r\nExpect: ${r.pick(['weird', '100-Continue', '200-ok', '', '100-continue, x'])}\r\n\r\n{"token":"x"}`,
  (r) => simple('/health/live', `Connection: Upgrade\r\nUpgrade: ${r.pick(['websocket', 'h2c', 'HTTP/2.0', 'x'])}\r\n${r.chance(0.5) ? 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n' : ''}`),
  () => Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, ...Buffer.alloc(32, 7)]),
  // HTTP/1.0 and pipelining.
  () => 'GET /health/live HTTP/1.0\r\n\r\n',
  () => 'GET /health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /health/ready HTTP/1.0\r\n\r\n',
  (r, s) => `POST /api/auth/login HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: ${JSON.stringify({ identifier: s.username, password: 'wrong' + r.int(0, 9) }).length}\r\n\r\n${JSON.stringify({ identifier: s.username, password: 'wrong' + r.int(0, 9) })}`,
  (r) => simple('/health/live').repeat(r.int(2, 8)),
  (r) => simple('/health/live') + r.pick(['garbage\r\n\r\n', '\u0000\u0001\u0002', 'GET / HTTP/1.1\r\n\r\n', 'G', 'HTTP/1.1 200 OK\r\n\r\n']),
  (r, s) => simple('/api/detail', `Authorization: Bearer ${s.access}\r\n`) + simple(`/api/auth/sessions/${s.sid}`, 'X-A: 1\r\n').replace('GET', r.pick(['DELETE', 'GET'])) + 'BREW / HTTP/1.1\r\n\r\n',
  () => 'garbage\r\n\r\n' + simple('/health/live'),
  () => '\r\n\r\n' + simple('/health/live'),
  () => '',
  () => '\r\n',
  (r) => r.bytes(r.int(1, 2000))
]

function mutate (r: Random, bytes: Buffer): Buffer {
  let out = Buffer.from(bytes)
  for (let n = r.int(1, 4); n > 0; n--) {
    const at = r.int(0, Math.max(0, out.length - 1))
    switch (r.int(0, 4)) {
      case 0: if (out.length > 0) out[at] = (out[at] ?? 0) ^ (1 << r.int(0, 7)); break
      case 1: out = Buffer.concat([out.subarray(0, at), r.bytes(r.int(1, 4)), out.subarray(at)]); break
      case 2: out = Buffer.concat([out.subarray(0, at), out.subarray(at + r.int(1, 8))]); break
      case 3: out = out.subarray(0, at); break
      default: out = Buffer.concat([out.subarray(0, at), Buffer.from(r.pick(['\r\n', '\n', '\r', ':', ' ', '\u0000', '\r\n\r\n', '%'])), out.subarray(at)])
    }
  }
  return out
}

/** Malformed HTTP: templates of broken requests, and well-framed requests with bytes broken. */
export function rawCase (r: Random, s: Secrets): RawCase {
  if (r.chance(0.45)) {
    const base = httpCase(r, s)
    const bytes = r.chance(0.15) ? serialize(base) : mutate(r, serialize(base, r.pick(['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0'])))
    return { kind: 'raw', what: `mutated ${base.what}`, bytes }
  }
  const index = r.int(0, TEMPLATES.length - 1)
  const made = (TEMPLATES[index] as (r: Random, s: Secrets) => string | Buffer)(r, s)
  const bytes = Buffer.isBuffer(made) ? made : Buffer.from(made, 'latin1')
  return { kind: 'raw', what: `template ${index}`, bytes }
}
