import envSchema from 'env-schema'
import { ConfigSchema, type Config } from './config.ts'
import { createDb, migrateDown, migrateToLatest } from './db/index.ts'

const USAGE = `usage: node src/cli.ts <command>
  migrate         apply the pending migrations
  migrate:down    undo the latest migration`

const commands: Record<string, (config: Config) => Promise<string>> = {
  async migrate (config) {
    const db = createDb(config)
    try {
      const applied = await migrateToLatest(db)
      return applied.length === 0 ? 'database is up to date' : `applied: ${applied.join(', ')}`
    } finally {
      await db.destroy()
    }
  },
  async 'migrate:down' (config) {
    const db = createDb(config)
    try {
      const undone = await migrateDown(db)
      return undone.length === 0 ? 'nothing to undo' : `undone: ${undone.join(', ')}`
    } finally {
      await db.destroy()
    }
  }
}

const command = commands[process.argv[2] ?? '']
if (command === undefined) {
  console.error(USAGE)
  process.exit(2)
}
try {
  console.log(await command(envSchema({ schema: ConfigSchema, dotenv: true })))
} catch (error) {
  console.error(`authgate: ${(error as Error).message}`)
  process.exit(1)
}
