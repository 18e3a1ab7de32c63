// tap's `before` script: one initialised PGlite data folder, copied by every test app instead
// of running initdb (about 3 s of WebAssembly) for each one.
import { PGlite } from '@electric-sql/pglite'
import { mkdir, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import { PGLITE_TEMPLATE } from './helper.ts'

if (process.env.DB_ENGINE !== 'postgres') {
  await rm(PGLITE_TEMPLATE, { recursive: true, force: true })
  // A fresh clone has no .tap folder yet.
  await mkdir(dirname(PGLITE_TEMPLATE), { recursive: true })
  const pglite = await PGlite.create(PGLITE_TEMPLATE)
  await pglite.close()
}
