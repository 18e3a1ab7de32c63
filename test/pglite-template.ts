// tap's `before` script: two PGlite data folders, copied by the test apps instead of running
// initdb (about 4 s of WebAssembly) and the migrations for each one: one just initialised (for
// the tests of migrations and of a start), and one migrated (for build()). Kept between runs,
// made again only when missing or made by another version of PGlite or of the migrations.
import { PGlite } from '@electric-sql/pglite'
import { createHash } from 'node:crypto'
import { cpSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { createDb, migrateToLatest } from '../src/db/index.ts'
import { PGLITE_MIGRATED_TEMPLATE, PGLITE_TEMPLATE } from './helper.ts'

const root = join(import.meta.dirname, '..')
const { version } = JSON.parse(await readFile(join(root, 'node_modules', '@electric-sql', 'pglite', 'package.json'), 'utf8')) as { version: string }
const migrationsHash = createHash('sha256')
for (const file of (await readdir(join(root, 'migrations'))).sort()) migrationsHash.update(file).update(await readFile(join(root, 'migrations', file)))
// PostgreSQL's default buffer pool (128 MB) is zeroed by every start of PGlite: in WebAssembly,
// 0.4 s of CPU of each test app's start (its memset, the most of it), where a test database
// holds a few MB. The tests' clusters start with 16 MB (pg_settings shows it); the app's own
// initdb, for a folder that is no copy of these, keeps the default.
const SETTINGS = "shared_buffers = '16MB'"
const versions = { [PGLITE_TEMPLATE]: `${version} ${SETTINGS}`, [PGLITE_MIGRATED_TEMPLATE]: `${version} ${SETTINGS} ${migrationsHash.digest('hex')}` }

/** Makes `target` with `make(folder)` when its marker says another version, renamed into place: a run copying it never sees half of one. */
async function ensure (target: string, make: (folder: string) => Promise<void>): Promise<void> {
  const marker = `${target}.version`
  if (await readFile(marker, 'utf8').catch(() => undefined) === versions[target]) return
  // A fresh clone has no .tap folder yet.
  await mkdir(dirname(target), { recursive: true })
  const building = await mkdtemp(join(dirname(target), 'template-'))
  await make(join(building, 'pgdata'))
  const old = `${building}-old`
  await rename(target, old).catch(() => {})
  await rename(join(building, 'pgdata'), target)
  await writeFile(marker, versions[target]!)
  await Promise.all([rm(building, { recursive: true, force: true }), rm(old, { recursive: true, force: true })])
}

if (process.env.DB_ENGINE !== 'postgres') {
  await ensure(PGLITE_TEMPLATE, async (folder) => {
    const pglite = await PGlite.create(folder)
    await pglite.exec(`alter system set ${SETTINGS}`)
    await pglite.close()
  })
  // The app's own database code migrates a copy: DB_NAME holds the data directory `pglite`.
  await ensure(PGLITE_MIGRATED_TEMPLATE, async (folder) => {
    const dbName = join(dirname(folder), 'db')
    cpSync(PGLITE_TEMPLATE, join(dbName, 'pglite'), { recursive: true })
    const config = { DB_ENGINE: 'pglite', DB_NAME: dbName, DATABASE_URL: undefined, DB_POOL_MAX: 1 } as const
    const db = createDb(config)
    await migrateToLatest(config, db)
    await db.destroy()
    await rename(join(dbName, 'pglite'), folder)
  })
}
