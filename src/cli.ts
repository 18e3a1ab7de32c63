import { loadConfig, processEnv, type Config } from './config.ts'
import { createDb, migrateDown, migrateToLatest, type Db } from './db/index.ts'
import { systemClock } from './lib/clock.ts'
import { SecretBox } from './lib/secret-box.ts'
import { createAuditTrail } from './services/audit.ts'
import { flushTokens } from './services/cleanup.ts'
import { rotateSigningKey } from './services/signing-keys.ts'
import { importDjangoUsers } from './services/django-import.ts'

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

/** A command: its output, from the configuration and the words after its name. */
type Command = (config: Config, args: string[]) => Promise<string>

const commands: Record<string, Command> = {
  migrate: (config) => withDb(config, async (db) => {
    const applied = await migrateToLatest(config, db)
    return applied.length === 0 ? 'database is up to date' : `applied: ${applied.join(', ')}`
  }),
  'migrate:down': (config) => withDb(config, async (db) => {
    const undone = await migrateDown(config, db)
    return undone.length === 0 ? 'nothing to undo' : `undone: ${undone.join(', ')}`
  }),
  'keys:rotate': (config, args) => withDb(config, async (db) => {
    const next = args.includes('--next')
    if (args.some((arg) => arg !== '--next')) throw new Error(`usage: npm run keys:rotate [-- --next], not ${args.join(' ')}`)
    if (config.JWT_PRIVATE_KEY !== undefined) throw new Error('the signing key comes from JWT_PRIVATE_KEY: rotate it there')
    const { kid, promoted } = await rotateSigningKey(db, new SecretBox(config.SECRET_KEY, 'signing-keys'), config.JWT_ALGORITHM, { next })
    const audit = createAuditTrail({ db, clock: systemClock, onDropped: (error) => { throw error } })
    audit.record({ event: 'key_rotated', detail: { kid, alg: config.JWT_ALGORITHM, next, promoted } })
    await audit.flush()
    return next
      ? `published ${kid} (${config.JWT_ALGORITHM}) in the JWKS; it signs after the next keys:rotate`
      : `signing with ${kid} (${config.JWT_ALGORITHM})${promoted ? ', the key published before' : ''}; the previous keys verify until their tokens expire`
  }),
  'tokens:flush': (config) => withDb(config, async (db) => {
    const { sessions, refreshTokens } = await flushTokens(db, config)
    return `deleted ${sessions} sessions and ${refreshTokens} refresh tokens`
  }),
  'import:django': async (config, args) => {
    const [flag, from, ...rest] = args
    if (flag !== '--from' || from === undefined || rest.length > 0) {
      throw new Error('usage: npm run import:django -- --from <postgres://… of the Django database | file of manage.py dumpdata auth.user>')
    }
    return await withDb(config, async (db) => {
      const { imported, unchanged, skipped } = await importDjangoUsers(db, from)
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
  try {
    const stdout = await command(await loadConfig(env, (message) => warnings.push(`authgate: ${message}`)), args.slice(1))
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
