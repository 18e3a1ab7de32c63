// The service's entry point, as `npm start` and the image run it. Plain JavaScript, not
// TypeScript: Node's compile cache (https://nodejs.org/api/module.html#module-compile-cache) is on
// before the first TypeScript file is read, so a start whose cache is warm takes every module's
// code, and the JavaScript stripped from each TypeScript file, from the cache, and Node's type
// stripper (17 to 20 MB of RSS; 6 % of a start's CPU in a profile) is never loaded. src/server.ts is the
// server itself; `node src/server.ts` runs it without the cache.
//
// NODE_COMPILE_CACHE names the folder, NODE_DISABLE_COMPILE_CACHE=1 turns it off. Otherwise a
// folder in the temporary directory that only this user can write: whoever can write the cache
// chooses the code that runs, so a folder another user made or can write is not used, and the
// service starts without the cache.
import { lstatSync, mkdirSync } from 'node:fs'
import { enableCompileCache } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

function compileCacheDir () {
  if (process.env.NODE_COMPILE_CACHE !== undefined) return process.env.NODE_COMPILE_CACHE
  const uid = process.getuid?.()
  if (uid === undefined) return join(tmpdir(), 'authgate-compile-cache')
  const dir = join(tmpdir(), `authgate-compile-cache-${uid}`)
  try {
    mkdirSync(dir, { mode: 0o700 })
  } catch (error) {
    if (error.code !== 'EEXIST') return undefined
  }
  try {
    const stat = lstatSync(dir)
    return stat.isDirectory() && stat.uid === uid && (stat.mode & 0o022) === 0 ? dir : undefined
  } catch {
    return undefined
  }
}

const cacheDir = compileCacheDir()
if (cacheDir !== undefined) enableCompileCache(cacheDir)
await import('./server.ts')
