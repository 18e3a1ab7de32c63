// tap's `before` script: one initialised PGlite data folder, copied by every test app instead
// of running initdb (about 4 s of WebAssembly) for each one. Kept between runs, made again
// only when missing or made by another version of PGlite.
import { PGlite } from '@electric-sql/pglite'
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { PGLITE_TEMPLATE } from './helper.ts'

const packageFile = join(import.meta.dirname, '..', 'node_modules', '@electric-sql', 'pglite', 'package.json')
const { version } = JSON.parse(await readFile(packageFile, 'utf8')) as { version: string }
const marker = `${PGLITE_TEMPLATE}.version`

if (process.env.DB_ENGINE !== 'postgres' && await readFile(marker, 'utf8').catch(() => undefined) !== version) {
  // A fresh clone has no .tap folder yet.
  await mkdir(dirname(PGLITE_TEMPLATE), { recursive: true })
  const building = await mkdtemp(join(dirname(PGLITE_TEMPLATE), 'pglite-template-'))
  const pglite = await PGlite.create(join(building, 'pgdata'))
  await pglite.close()
  // Renamed into place: a run that is copying the folder never sees half of one.
  const old = `${building}-old`
  await rename(PGLITE_TEMPLATE, old).catch(() => {})
  await rename(join(building, 'pgdata'), PGLITE_TEMPLATE)
  await writeFile(marker, version)
  await Promise.all([rm(building, { recursive: true, force: true }), rm(old, { recursive: true, force: true })])
}
