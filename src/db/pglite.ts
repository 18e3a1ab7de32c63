import { PGliteDialect, type Dialect } from 'kysely'
import { join } from 'node:path'
import { ensureDataFolder } from '../config.ts'
import { lockFolder, type FolderLock } from '../lib/folder-lock.ts'

/** The PGlite data directory inside the data folder DB_NAME; `memory://` keeps it in memory. */
export function pgliteDataDir (dbName: string): string {
  return dbName.startsWith('memory://') ? dbName : join(dbName, 'pglite')
}

// The group and other bits of a mode.
const NOT_THE_OWNERS = 0o077

interface NodeOps {
  mknod: (parent: unknown, name: string, mode: number, dev: number) => unknown
  setattr: (node: unknown, attr: { mode?: number }) => void
}
interface NodeFsModule { NODEFS: { node_ops: NodeOps, stream_ops: { setattr: NodeOps['setattr'] } } }

/**
 * Emscripten's NODEFS, as PGlite mounts it, creates every file 0666 (a chmod after the create,
 * whatever the umask): within the folder only its owner may read, these make the folder's
 * files the owner's alone too, as PostgreSQL's own are (0600, directories 0700).
 */
function ownerOnly (mod: NodeFsModule): void {
  const { node_ops: nodeOps, stream_ops: streamOps } = mod.NODEFS
  const { mknod, setattr } = nodeOps
  const setattrOfStream = streamOps.setattr
  const masked = <T extends { mode?: number }>(attr: T): T => attr.mode === undefined ? attr : { ...attr, mode: attr.mode & ~NOT_THE_OWNERS }
  nodeOps.mknod = (parent, name, mode, dev) => mknod(parent, name, mode & ~NOT_THE_OWNERS, dev)
  nodeOps.setattr = (node, attr) => setattr(node, masked(attr))
  streamOps.setattr = (stream, attr) => setattrOfStream(stream, masked(attr))
}

/**
 * PGlite (https://pglite.dev) in the data folder `dbName`, or in memory. A folder serves one
 * process at a time: the lock is taken before PGlite opens it and given back once it closed, so
 * a second `npm start`, or a CLI command beside a running service, refuses instead of writing
 * the same files.
 */
export function pgliteDialect (dbName: string): { dialect: Dialect, release: () => Promise<void> } {
  let lock: FolderLock | undefined
  const dialect = new PGliteDialect({
    // Imported only when chosen: PostgreSQL deployments never load the WebAssembly engine.
    pglite: async () => {
      const [{ PGlite }, { NodeFS }, { citext }] = await Promise.all([
        import('@electric-sql/pglite'),
        import('@electric-sql/pglite/nodefs'),
        import('@electric-sql/pglite/contrib/citext')
      ])
      if (dbName.startsWith('memory://')) return await PGlite.create(dbName, { extensions: { citext } })
      // A folder of the owner's alone keeps others out.
      await ensureDataFolder(dbName)
      lock = await lockFolder(dbName)
      class OwnerOnlyFS extends NodeFS {
        override async init (...args: Parameters<InstanceType<typeof NodeFS>['init']>): ReturnType<InstanceType<typeof NodeFS>['init']> {
          const result = await super.init(...args)
          result.emscriptenOpts.preRun = [(mod) => ownerOnly(mod as unknown as NodeFsModule), ...result.emscriptenOpts.preRun ?? []]
          return result
        }
      }
      try {
        return await PGlite.create({ fs: new OwnerOnlyFS(pgliteDataDir(dbName)), extensions: { citext } })
      } catch (error) {
        await lock.release()
        throw error
      }
    }
  })
  return { dialect, release: async () => { await lock?.release() } }
}
