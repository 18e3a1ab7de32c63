import { readFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { migrations } from '../migrations/index.ts'
import { durationToSeconds, loadConfig, processEnv, type Config } from './config.ts'
import { createDb, migrateDown, migrateToLatest, type Db } from './db/index.ts'
import { COMMAND_SOCKET, listenForCommands, sendCommand, type CommandRequest, type CommandResult, type CommandServer } from './lib/command-socket.ts'
import { FolderLockedError, holderName } from './lib/folder-lock.ts'
import type { Logger } from './lib/logger.ts'
import { createServices, type Services } from './services/index.ts'
import { CLIENT_TOKEN_TTL_S, type ClientJwks, type ServiceClient, type TrustedIssuer } from './services/oauth/clients.ts'
import { ValidationFailedError } from './errors.ts'

const USAGE = `usage: node src/cli.ts <command>
  migrate         apply the pending migrations
  migrate:down    undo the latest migration
  tokens:flush    delete ended sessions, expired refresh tokens and spent one-time secrets
  keys:rotate     sign with a new key (or the one published with --next); the old one keeps verifying
  keys:rotate --next   publish the next key in the JWKS before it signs
  import:django --from <postgres://… | dump.json>
                  import the users of a Django project, their password hashes kept
  clients <create|list|show|update|rotate-secret|disable|enable> …
                  service clients (OAuth client credentials); clients --help says more`

const CLIENTS_USAGE = `usage: npm run clients -- <command>
  create --name <name> --audience <uri> [--audience <uri>…] [--scope <scope>…] [--ttl 10m] [--jwks <file>]
         [--exchange-to <uri>…] [--trust-issuer <url> --subject <sub> [--subject <sub>…] [--trust-jwks-uri <url>] [--trust-alg RS256]] [--json]
                  a client and its first secret, shown once; with --jwks a private_key_jwt client, which has none;
                  with --trust-issuer a workload client, which has none either: it gets tokens with the JWT bearer
                  grant and a token of that issuer for one of the subjects (RFC 7523 §2.1);
                  --exchange-to: the audiences it may exchange the tokens it is given toward (RFC 8693)
                  (--json: {"client_id","token_endpoint_auth_method","client_secret"?})
  list [--json]   every client
  show <id> [--json]
                  a client and when its secrets were made and stop working
  update <id> [--scope <scope>…] [--audience <uri>…] [--exchange-to <uri>… | --no-exchange] [--subject <sub>…] [--ttl 10m] [--json]
                  its policy: each list given replaces the one it had; every replica judges its tokens by it at once
  rotate-secret <id> [--grace 1d] [--json]
                  a new secret, shown once; the old one works for the grace (default 1d, 0 ends it now)
  disable <id>    its tokens are refused from now on (within the cache bound on other replicas)
  enable <id>`

// The audit trail's caller of a command: no address, the command line.
const CLI_CALLER = { device: { userAgent: 'authgate-cli', ip: null } }
const DURATION = /^[0-9]{1,9}[smhd]?$/

/** `value` as seconds, for the option `name`: 300, 300s, 10m, 2h, 1d. */
function secondsOf (name: string, value: string): number {
  if (!DURATION.test(value)) throw new ValidationFailedError([{ field: name, message: `${JSON.stringify(value)} is not a duration like 300, 10m, 2h or 1d` }])
  return durationToSeconds(value)
}

/** How a client proves itself, in words. */
function authenticationOf (client: ServiceClient): string {
  if (client.trust !== null) {
    const { issuer, jwksUri, subjects, alg } = client.trust
    return `none: JWT bearer grant with ${alg} tokens of ${issuer}${jwksUri === null ? '' : ` (keys at ${jwksUri})`} for ${subjects.join(', ')}`
  }
  return client.jwks === null ? `${client.authMethod} (client_secret_post too)` : `${client.authMethod} with ${client.jwks.keys.length} key(s), no secret`
}

// --scope, each given once or space-separated; undefined when none is given.
const scopesOption = (values: string[] | undefined): string[] | undefined => values?.flatMap((scope) => scope.split(' ').filter(Boolean))

/** A client as `list` and `show` print it: one line of what it is, a line each of what it holds. */
function describeClient (client: ServiceClient): string {
  return [
    `${client.id}  ${JSON.stringify(client.name)}${client.disabled ? '  DISABLED' : ''}`,
    `  scopes: ${client.scopes.join(' ') || '(none)'}`,
    `  audiences: ${client.audiences.join(' ')}`,
    `  token lifetime: ${client.tokenTtlS} s`,
    `  authentication: ${authenticationOf(client)}`,
    ...(client.exchangeAudiences.length === 0 ? [] : [`  exchanges toward: ${client.exchangeAudiences.join(' ')}`])
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
  exchange_audiences: client.exchangeAudiences,
  ...(client.trust === null ? {} : { trusted_issuer: client.trust.issuer, trusted_jwks_uri: client.trust.jwksUri, trusted_subjects: client.trust.subjects, trusted_alg: client.trust.alg }),
  disabled: client.disabled,
  created_at: client.createdAt
})

/**
 * Where a command runs: on a database connection of its own, or inside the service running on
 * the same PGlite data folder, which took it over its control socket, on the service's connection.
 */
interface Scope {
  config: Config
  log: Logger
  /** The folder the command line's relative paths (--jwks, --from) mean: the caller's. */
  cwd: string
  /** `work` with the database: a connection of the command's own, closed after it; or the service's. */
  withDb: <T>(work: (db: Db) => Promise<T>) => Promise<T>
  /**
   * Makes a change of the signing keys visible at once to the service the command runs in.
   * Nothing for a command on its own connection: a start loads the keys, and on PostgreSQL the
   * database notifies every replica.
   */
  keysChanged: () => Promise<void>
}

/** npm run clients -- …: the service clients' commands, each change audited. */
async function clientsCommand (scope: Scope, args: string[]): Promise<string> {
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
        'exchange-to': { type: 'string', multiple: true },
        'no-exchange': { type: 'boolean' },
        'trust-issuer': { type: 'string' },
        'trust-jwks-uri': { type: 'string' },
        'trust-alg': { type: 'string' },
        subject: { type: 'string', multiple: true },
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
  return await withServices(scope, async ({ clients }) => {
    switch (verb) {
      case 'create': {
        if (options.name === undefined || positionals.length > 0) throw new Error(`create takes --name and --audience\n${CLIENTS_USAGE}`)
        const jwks = options.jwks === undefined ? undefined : JSON.parse(await readFile(resolve(scope.cwd, options.jwks), 'utf8')) as ClientJwks
        const issuer = options['trust-issuer']
        if (issuer === undefined && (options.subject !== undefined || options['trust-jwks-uri'] !== undefined || options['trust-alg'] !== undefined)) {
          throw new Error(`--subject, --trust-jwks-uri and --trust-alg go with --trust-issuer\n${CLIENTS_USAGE}`)
        }
        const { client, secret } = await clients.create({
          name: options.name,
          scopes: scopesOption(options.scope) ?? [],
          audiences: options.audience ?? [],
          tokenTtlS: options.ttl === undefined ? CLIENT_TOKEN_TTL_S.default : secondsOf('ttl', options.ttl),
          exchangeAudiences: options['exchange-to'] ?? [],
          ...(jwks === undefined ? {} : { jwks }),
          ...(issuer === undefined
            ? {}
            : { trust: { issuer, jwksUri: options['trust-jwks-uri'] ?? null, subjects: options.subject ?? [], alg: (options['trust-alg'] ?? 'RS256') as TrustedIssuer['alg'] } })
        }, CLI_CALLER)
        // --json prints exactly what a script stores: nothing to parse around (RFC 7591's names).
        if (json) return JSON.stringify({ client_id: client.id, token_endpoint_auth_method: client.authMethod, ...(secret === null ? {} : { client_secret: secret }) })
        if (client.trust !== null) return `created\n${describeClient(client)}\nclient_id: ${client.id}\n(no secret: it proves itself with a token of ${client.trust.issuer})`
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
      case 'update': {
        if (options['no-exchange'] === true && options['exchange-to'] !== undefined) throw new Error(`update takes --exchange-to or --no-exchange, not both\n${CLIENTS_USAGE}`)
        // What update does not change is refused, never ignored: a client's name and way in are made once.
        const fixed = (['name', 'jwks', 'trust-issuer', 'trust-jwks-uri', 'trust-alg'] as const).filter((name) => options[name] !== undefined)
        if (fixed.length > 0) throw new Error(`update does not change ${fixed.map((name) => `--${name}`).join(', ')}: make a new client for that\n${CLIENTS_USAGE}`)
        const client = await clients.update(idOf(), {
          scopes: scopesOption(options.scope),
          audiences: options.audience,
          exchangeAudiences: options['no-exchange'] === true ? [] : options['exchange-to'],
          subjects: options.subject,
          tokenTtlS: options.ttl === undefined ? undefined : secondsOf('ttl', options.ttl)
        }, CLI_CALLER)
        return output(clientJson(client), `updated\n${describeClient(client)}`)
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

/** A database connection of the command's own, closed after `work`. */
async function withOwnDb<T> (config: Config, work: (db: Db) => Promise<T>): Promise<T> {
  const db = createDb(config)
  try {
    return await work(db)
  } finally {
    await db.destroy()
  }
}

/** The services, as the server builds them but without its timers and listener, closed after `work`. */
async function withServices<T> (scope: Scope, work: (services: Services) => Promise<T>): Promise<T> {
  return await scope.withDb(async (db) => {
    const services = await createServices({ config: scope.config, db, log: scope.log, background: false })
    try {
      return await work(services)
    } finally {
      await services.close()
    }
  })
}

/** A command: its output, from where it runs and the words after its name. */
type Command = (scope: Scope, args: string[]) => Promise<string>

const commands: Record<string, Command> = {
  // Beside a service of the same version there is nothing to apply: it migrated at its start.
  migrate: ({ config, withDb }) => withDb(async (db) => {
    const applied = await migrateToLatest(config, db)
    return applied.length === 0 ? 'database is up to date' : `applied: ${applied.join(', ')}`
  }),
  'migrate:down': ({ config, withDb }) => withDb(async (db) => {
    const undone = await migrateDown(config, db)
    return undone.length === 0 ? 'nothing to undo' : `undone: ${undone.join(', ')}`
  }),
  'keys:rotate': (scope, args) => withServices(scope, async ({ signingKeys }) => {
    const { config } = scope
    const next = args.includes('--next')
    if (args.some((arg) => arg !== '--next')) throw new Error(`usage: npm run keys:rotate [-- --next], not ${args.join(' ')}`)
    const { kid, promoted } = await signingKeys.rotate({ next })
    await scope.keysChanged()
    return next
      ? `published ${kid} (${config.JWT_ALGORITHM}) in the JWKS; it signs after the next keys:rotate`
      : `signing with ${kid} (${config.JWT_ALGORITHM})${promoted ? ', the key published before' : ''}; the previous keys verify until their tokens expire`
  }),
  'tokens:flush': (scope) => withServices(scope, async ({ cleanup }) => {
    const { sessions, refreshTokens, assertions, oneTimeCodes } = await cleanup.flush()
    return `deleted ${sessions} sessions, ${refreshTokens} refresh tokens, ${assertions} spent client assertions and ${oneTimeCodes} spent or expired one-time secrets`
  }),
  clients: clientsCommand,
  // Beside the service, its requests wait for the import's one transaction.
  'import:django': async (scope, args) => {
    const [flag, from, ...rest] = args
    if (flag !== '--from' || from === undefined || rest.length > 0) {
      throw new Error('usage: npm run import:django -- --from <postgres://… of the Django database | file of manage.py dumpdata auth.user>')
    }
    // A URL as it is; a file where the caller meant it.
    const source = /^[a-z][a-z0-9+.-]*:\/\//i.test(from) ? from : resolve(scope.cwd, from)
    return await withServices(scope, async ({ djangoImport }) => {
      const { imported, unchanged, skipped } = await djangoImport.run(source)
      return [
        ...skipped.map(({ id, username, why }) => `skipped ${id ?? '(no id)'} ${JSON.stringify(username)}: ${why}`),
        `imported ${imported}, unchanged ${unchanged}, skipped ${skipped.length}`
      ].join('\n')
    })
  }
}

/** The command of that name; none for a name the table does not hold itself (`constructor` is not a command). */
const commandOf = (name: string | undefined): Command | undefined => name !== undefined && Object.hasOwn(commands, name) ? commands[name] : undefined

/** The commands that cannot run inside a service running on the same PGlite data folder, and why; it runs every other one. */
const NOT_BESIDE_A_SERVICE: Record<string, string> = {
  'migrate:down': 'it would take away the schema that service\'s code works on'
}

export type CliResult = CommandResult

// What this version's migrations are: a service of another version runs its own code, so it refuses.
const MIGRATIONS = Object.keys(migrations)

/** The line a failed command prints. */
function problemOf (error: unknown): string {
  // A refused definition names each field as the option it is typed as: the API's exchange_to is --exchange-to.
  const fields = error instanceof ValidationFailedError ? error.errors.map((e) => `\n  --${e.field.replaceAll('_', '-')}: ${e.message}`).join('') : ''
  // The folder's holder did not take the command over its socket: it starts or stops, or it is another command.
  const message = error instanceof FolderLockedError && error.holder !== undefined
    ? `the data folder ${error.folder} is in use by ${holderName(error.holder)}, which does not take commands now (a service starting or stopping, or another command): try again in a moment, or stop it first`
    : (error as Error).message
  return `authgate: ${message}${fields}`
}

/** Runs the command line `args` in `scope`: what it prints, with the warnings its services logged, and the exit code. */
async function runCommand (args: string[], scope: Omit<Scope, 'log'>, warnings: string[] = []): Promise<CliResult> {
  const command = commandOf(args[0])
  if (command === undefined) return { code: 2, stdout: '', stderr: USAGE }
  // What a command's services would log goes to stderr as warnings, one line each; no request, no id.
  const warn = (details: object, message: string): void => {
    const err = (details as { err?: { message?: string } }).err
    warnings.push(`authgate: ${message}${err?.message === undefined ? '' : `: ${err.message}`}`)
  }
  try {
    const stdout = await command({ ...scope, log: { info: () => {}, warn, error: warn } }, args.slice(1))
    return { code: 0, stdout, stderr: warnings.join('\n') }
  } catch (error) {
    return { code: 1, stdout: '', stderr: [...warnings, problemOf(error)].join('\n') }
  }
}

/** The PGlite data folder whose service takes commands; none on PostgreSQL or in memory. */
function commandFolder (config: Config): string | undefined {
  return config.DB_ENGINE === 'pglite' && !config.DB_NAME.startsWith('memory://') ? config.DB_NAME : undefined
}

/**
 * Runs one command with the configuration of `env`; what it prints, and the exit code. On a
 * PGlite folder that a service is running on, that service runs it (see serveCommands), and
 * this prints what it answers: the same as the command would have printed here.
 */
export async function runCli (args: string[], env: Record<string, string | undefined>): Promise<CliResult> {
  if (commandOf(args[0]) === undefined) return { code: 2, stdout: '', stderr: USAGE }
  const warnings: string[] = []
  try {
    const config = await loadConfig(env, (message) => warnings.push(`authgate: ${message}`))
    const folder = commandFolder(config)
    const answer = folder === undefined ? undefined : await sendCommand(join(folder, COMMAND_SOCKET), { args, cwd: process.cwd(), migrations: MIGRATIONS })
    if (answer !== undefined) return { ...answer, stderr: [...warnings, answer.stderr].filter((line) => line !== '').join('\n') }
    return await runCommand(args, { config, cwd: process.cwd(), withDb: (work) => withOwnDb(config, work), keysChanged: async () => {} }, warnings)
  } catch (error) {
    return { code: 1, stdout: '', stderr: [...warnings, problemOf(error)].join('\n') }
  }
}

/** What a running service lends the commands it takes. */
export interface CommandHost {
  config: Config
  /** The service's own database: PGlite's one connection. */
  db: Db
  /** Where the service logs each command it ran (its name and exit code: arguments may hold a URL's password). */
  log: Logger
  /** The service's keyring: reloaded after a key rotation, so the JWKS and the signer change at once. */
  keyring: { reload: () => Promise<void> }
}

/**
 * The running service's side, on a PGlite data folder: the folder is one connection in one
 * process, so a CLI command cannot open it beside the service; the service takes the command
 * over its control socket instead and runs it on its own connection, with services of its own
 * composition root, and answers what the command prints and its exit code. A command that
 * cannot run beside the service (migrate:down) is refused, saying why. Undefined on PostgreSQL
 * (every command has a connection of its own there) and in memory; also when the socket cannot
 * be opened (said in the log): the CLI then needs the service stopped, as the lock tells it.
 */
export async function serveCommands ({ config, db, log, keyring }: CommandHost): Promise<CommandServer | undefined> {
  const folder = commandFolder(config)
  if (folder === undefined) return undefined
  const here = `the service running on this data folder (process ${process.pid})`
  const run = async ({ args, cwd, migrations: theirs }: CommandRequest): Promise<CliResult> => {
    const name = args[0] ?? ''
    const why = Object.hasOwn(NOT_BESIDE_A_SERVICE, name) ? NOT_BESIDE_A_SERVICE[name] : undefined
    let result: CliResult
    if (theirs.join('\n') !== MIGRATIONS.join('\n')) {
      result = { code: 1, stdout: '', stderr: `authgate: ${here} is another version of authgate than this command (their migrations differ): run the command of the service's version, or restart the service on this one` }
    } else if (why !== undefined) {
      result = { code: 1, stdout: '', stderr: `authgate: ${name} does not run beside ${here}: ${why}; stop the service first` }
    } else {
      result = await runCommand(args, { config, cwd, withDb: (work) => work(db), keysChanged: () => keyring.reload() })
    }
    log.info({ command: name, code: result.code }, 'ran a command of the CLI')
    return result
  }
  try {
    return await listenForCommands(join(folder, COMMAND_SOCKET), run)
  } catch (error) {
    log.warn({ err: error }, 'the CLI\'s commands cannot be handed to this service: they need it stopped')
    return undefined
  }
}

if (import.meta.main) {
  const { code, stdout, stderr } = await runCli(process.argv.slice(2), processEnv())
  if (stderr !== '') console.error(stderr)
  if (stdout !== '') console.log(stdout)
  process.exitCode = code
}
