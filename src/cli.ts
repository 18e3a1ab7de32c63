import { loadConfig, processEnv, type Config } from './config.ts'
import { createDb, migrateDown, migrateToLatest, type Db } from './db/index.ts'
import type { Logger } from './lib/logger.ts'
import { createServices, type Services } from './services/index.ts'

const USAGE = `usage: node src/cli.ts <command>
  migrate         apply the pending migrations
  migrate:down    undo the latest migration
  tokens:flush    delete ended sessions and expired refresh tokens
  keys:rotate     sign with a new key (or the one published with --next); the old one keeps verifying
  keys:rotate --next   publish the next key in the JWKS before it signs
  import:django --from <postgres://… | dump.json>
                  import the users of a Django project, their password hashes kept`

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
    const { sessions, refreshTokens } = await cleanup.flush()
    return `deleted ${sessions} sessions and ${refreshTokens} refresh tokens`
  }),
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
    return { code: 1, stdout: '', stderr: [...warnings, `authgate: ${(error as Error).message}`].join('\n') }
  }
}

if (import.meta.main) {
  const { code, stdout, stderr } = await runCli(process.argv.slice(2), processEnv())
  if (stderr !== '') console.error(stderr)
  if (stdout !== '') console.log(stdout)
  process.exitCode = code
}
