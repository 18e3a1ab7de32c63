import { loadConfig, processEnv, type Config } from './config.ts'
import { createDb, migrateDown, migrateToLatest, type Db } from './db/index.ts'

const USAGE = `usage: node src/cli.ts <command>
  migrate         apply the pending migrations
  migrate:down    undo the latest migration`

async function withDb<T> (config: Config, work: (db: Db) => Promise<T>): Promise<T> {
  const db = createDb(config)
  try {
    return await work(db)
  } finally {
    await db.destroy()
  }
}

const commands: Record<string, (config: Config) => Promise<string>> = {
  migrate: (config) => withDb(config, async (db) => {
    const applied = await migrateToLatest(config, db)
    return applied.length === 0 ? 'database is up to date' : `applied: ${applied.join(', ')}`
  }),
  'migrate:down': (config) => withDb(config, async (db) => {
    const undone = await migrateDown(config, db)
    return undone.length === 0 ? 'nothing to undo' : `undone: ${undone.join(', ')}`
  })
}

const command = commands[process.argv[2] ?? '']
if (command === undefined) {
  console.error(USAGE)
  process.exit(2)
}
try {
  console.log(await command(await loadConfig(processEnv(), (message) => console.warn(`authgate: ${message}`))))
} catch (error) {
  console.error(`authgate: ${(error as Error).message}`)
  process.exit(1)
}
