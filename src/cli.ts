import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { durationToSeconds, loadConfig, processEnv, type Config } from './config.ts'
import { createDb, migrateDown, migrateToLatest, type Db } from './db/index.ts'
import type { Logger } from './lib/logger.ts'
import { createServices, type Services } from './services/index.ts'
import { CLIENT_TOKEN_TTL_S, type ClientJwks, type ServiceClient } from './services/clients.ts'
import { ValidationFailedError } from './errors.ts'

const USAGE = `usage: node src/cli.ts <command>
  migrate         apply the pending migrations
  migrate:down    undo the latest migration
  tokens:flush    delete ended sessions, expired refresh tokens and spent one-time secrets
  keys:rotate     sign with a new key (or the one published with --next); the old one keeps verifying
  keys:rotate --next   publish the next key in the JWKS before it signs
  import:django --from <postgres://… | dump.json>
                  import the users of a Django project, their password hashes kept
  clients <create|list|show|rotate-secret|disable|enable> …
                  service clients (OAuth client credentials); clients --help says more`

const CLIENTS_USAGE = `usage: npm run clients -- <command>
  create --name <name> --audience <uri> [--audience <uri>…] [--scope <scope>…] [--ttl 10m] [--jwks <file>] [--json]
                  a client and its first secret, shown once; with --jwks a private_key_jwt client, which has none
                  (--json: {"client_id","token_endpoint_auth_method","client_secret"?})
  list [--json]   every client
  show <id> [--json]
                  a client and when its secrets were made and stop working
  rotate-secret <id> [--grace 1d] [--json]
                  a new secret, shown once; the old one works for the grace (default 1d, 0 ends it now)
  disable <id>    its tokens are refused from now on (within the cache bound on other replicas)
  enable <id>`

// The audit trail's caller of a command: no address, the command line.
const CLI_CALLER = { client: { userAgent: 'authgate-cli', ip: null } }
const DURATION = /^[0-9]{1,9}[smhd]?$/

/** `value` as seconds, for the option `name`: 300, 300s, 10m, 2h, 1d. */
function secondsOf (name: string, value: string): number {
  if (!DURATION.test(value)) throw new ValidationFailedError([{ field: name, message: `${JSON.stringify(value)} is not a duration like 300, 10m, 2h or 1d` }])
  return durationToSeconds(value)
}

/** A client as `list` and `show` print it: one line of what it is, a line each of what it holds. */
function describeClient (client: ServiceClient): string {
  return [
    `${client.id}  ${JSON.stringify(client.name)}${client.disabled ? '  DISABLED' : ''}`,
    `  scopes: ${client.scopes.join(' ') || '(none)'}`,
    `  audiences: ${client.audiences.join(' ')}`,
    `  token lifetime: ${client.tokenTtlS} s`,
    `  authentication: ${client.jwks === null ? `${client.authMethod} (client_secret_post too)` : `${client.authMethod} with ${client.jwks.keys.length} key(s), no secret`}`
  ].join('\n')
}

const clientJson = (client: ServiceClient) => ({
  client_id: client.id,
  name: client.name,
  scopes: client.scopes,
  audiences: client.audiences,
  token_ttl_s: client.tokenTtlS,
  token_endpoint_auth_method: client.authMethod,
  private_key_jwt: client.jwks !== null,
  disabled: client.disabled,
  created_at: client.createdAt
})

/** npm run clients -- …: the service clients' commands, each change audited. */
async function clientsCommand (config: Config, args: string[], log: Logger): Promise<string> {
  const [verb, ...rest] = args
  let parsed
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        name: { type: 'string' },
        scope: { type: 'string', multiple: true },
        audience: { type: 'string', multiple: true },
        ttl: { type: 'string' },
        jwks: { type: 'string' },
        grace: { type: 'string' },
        json: { type: 'boolean' }
      }
    })
  } catch (error) {
    throw new Error(`${(error as Error).message}\n${CLIENTS_USAGE}`)
  }
  const { values: options, positionals } = parsed
  const json = options.json === true
  const output = (value: unknown, text: string): string => json ? JSON.stringify(value, null, 2) : text
  const idOf = (): string => {
    if (positionals.length !== 1) throw new Error(`${verb} takes one client id\n${CLIENTS_USAGE}`)
    return positionals[0]!
  }
  return await withServices(config, log, async ({ clients }) => {
    switch (verb) {
      case 'create': {
        if (options.name === undefined || positionals.length > 0) throw new Error(`create takes --name and --audience\n${CLIENTS_USAGE}`)
        const jwks = options.jwks === undefined ? undefined : JSON.parse(await readFile(options.jwks, 'utf8')) as ClientJwks
        const { client, secret } = await clients.create({
          name: options.name,
          scopes: (options.scope ?? []).flatMap((scope) => scope.split(' ').filter(Boolean)),
          audiences: options.audience ?? [],
          tokenTtlS: options.ttl === undefined ? CLIENT_TOKEN_TTL_S.default : secondsOf('ttl', options.ttl),
          ...(jwks === undefined ? {} : { jwks })
        }, CLI_CALLER)
        // --json prints exactly what a script stores: nothing to parse around (RFC 7591's names).
        if (json) return JSON.stringify({ client_id: client.id, token_endpoint_auth_method: client.authMethod, ...(secret === null ? {} : { client_secret: secret }) })
        if (secret === null) return `created\n${describeClient(client)}\nclient_id: ${client.id}\n(no secret: it signs client_assertions with a key of its JWKS)`
        return `created\n${describeClient(client)}\nclient_id: ${client.id}\nclient_secret: ${secret}\n(the secret is shown this once: store it now)`
      }
      case 'list': {
        const all = await clients.list()
        return output(all.map(clientJson), all.length === 0 ? 'no clients' : all.map(describeClient).join('\n'))
      }
      case 'show': {
        const { client, secrets } = await clients.show(idOf())
        const lines = secrets.map((s) => `  secret made ${s.createdAt.toISOString()}, ${s.expiresAt === null ? 'current' : `works until ${s.expiresAt.toISOString()}`}`)
        return output({ ...clientJson(client), secrets: secrets.map((s) => ({ created_at: s.createdAt, expires_at: s.expiresAt })) }, [describeClient(client), ...lines].join('\n'))
      }
      case 'rotate-secret': {
        const id = idOf()
        const graceS = secondsOf('grace', options.grace ?? '1d')
        const { secret, previousExpiresAt } = await clients.rotateSecret(id, graceS, CLI_CALLER)
        const previous = previousExpiresAt === null ? 'no previous secret' : `the previous secret works until ${previousExpiresAt.toISOString()}`
        return output({ client_id: id, client_secret: secret, previous_secret_expires_at: previousExpiresAt }, `client_secret: ${secret}\n(shown this once: store it now); ${previous}`)
      }
      case 'disable':
      case 'enable': {
        const client = await (verb === 'disable' ? clients.disable(idOf(), CLI_CALLER) : clients.enable(idOf(), CLI_CALLER))
        return output(clientJson(client), `${verb}d ${client.id} ${JSON.stringify(client.name)}`)
      }
      default:
        throw new Error(CLIENTS_USAGE)
    }
  })
}

async function withDb<T> (config: Config, work: (db: Db) => Promise<T>): Promise<T> {
  const db = createDb(config)
  try {
    return await work(db)
  } finally {
    await db.destroy()
  }
}

/** The services, as the server builds them but without its timers and listener, closed after `work`. */
async function withServices<T> (config: Config, log: Logger, work: (services: Services) => Promise<T>): Promise<T> {
  return await withDb(config, async (db) => {
    const services = await createServices({ config, db, log, background: false })
    try {
      return await work(services)
    } finally {
      await services.close()
    }
  })
}

/** A command: its output, from the configuration, the words after its name, and where to say what went wrong. */
type Command = (config: Config, args: string[], log: Logger) => Promise<string>

const commands: Record<string, Command> = {
  migrate: (config) => withDb(config, async (db) => {
    const applied = await migrateToLatest(config, db)
    return applied.length === 0 ? 'database is up to date' : `applied: ${applied.join(', ')}`
  }),
  'migrate:down': (config) => withDb(config, async (db) => {
    const undone = await migrateDown(config, db)
    return undone.length === 0 ? 'nothing to undo' : `undone: ${undone.join(', ')}`
  }),
  'keys:rotate': (config, args, log) => withServices(config, log, async ({ signingKeys }) => {
    const next = args.includes('--next')
    if (args.some((arg) => arg !== '--next')) throw new Error(`usage: npm run keys:rotate [-- --next], not ${args.join(' ')}`)
    const { kid, promoted } = await signingKeys.rotate({ next })
    return next
      ? `published ${kid} (${config.JWT_ALGORITHM}) in the JWKS; it signs after the next keys:rotate`
      : `signing with ${kid} (${config.JWT_ALGORITHM})${promoted ? ', the key published before' : ''}; the previous keys verify until their tokens expire`
  }),
  'tokens:flush': (config, _args, log) => withServices(config, log, async ({ cleanup }) => {
    const { sessions, refreshTokens, assertions, oneTimeCodes } = await cleanup.flush()
    return `deleted ${sessions} sessions, ${refreshTokens} refresh tokens, ${assertions} spent client assertions and ${oneTimeCodes} spent or expired one-time secrets`
  }),
  clients: clientsCommand,
  'import:django': async (config, args, log) => {
    const [flag, from, ...rest] = args
    if (flag !== '--from' || from === undefined || rest.length > 0) {
      throw new Error('usage: npm run import:django -- --from <postgres://… of the Django database | file of manage.py dumpdata auth.user>')
    }
    return await withServices(config, log, async ({ djangoImport }) => {
      const { imported, unchanged, skipped } = await djangoImport.run(from)
      return [
        ...skipped.map(({ id, username, why }) => `skipped ${id ?? '(no id)'} ${JSON.stringify(username)}: ${why}`),
        `imported ${imported}, unchanged ${unchanged}, skipped ${skipped.length}`
      ].join('\n')
    })
  }
}

export interface CliResult { code: number, stdout: string, stderr: string }

/** Runs one command with the configuration of `env`; what it prints, and the exit code. */
export async function runCli (args: string[], env: Record<string, string | undefined>): Promise<CliResult> {
  const command = commands[args[0] ?? '']
  if (command === undefined) return { code: 2, stdout: '', stderr: USAGE }
  const warnings: string[] = []
  // What a command's services would log goes to stderr as warnings, one line each; no request, no id.
  const warn = (details: object, message: string): void => {
    const err = (details as { err?: { message?: string } }).err
    warnings.push(`authgate: ${message}${err?.message === undefined ? '' : `: ${err.message}`}`)
  }
  const log: Logger = { info: () => {}, warn, error: warn }
  try {
    const stdout = await command(await loadConfig(env, (message) => warnings.push(`authgate: ${message}`)), args.slice(1), log)
    return { code: 0, stdout, stderr: warnings.join('\n') }
  } catch (error) {
    // A refused definition names each field, as the API would.
    const fields = error instanceof ValidationFailedError ? error.errors.map((e) => `\n  --${e.field}: ${e.message}`).join('') : ''
    return { code: 1, stdout: '', stderr: [...warnings, `authgate: ${(error as Error).message}${fields}`].join('\n') }
  }
}

if (import.meta.main) {
  const { code, stdout, stderr } = await runCli(process.argv.slice(2), processEnv())
  if (stderr !== '') console.error(stderr)
  if (stdout !== '') console.log(stdout)
  process.exitCode = code
}
