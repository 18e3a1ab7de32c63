import type { Migration } from 'kysely/migration'
import * as initial from './0001-initial.ts'
import * as nextSigningKey from './0002-next-signing-key.ts'

/** Every migration, in order: listed here, never discovered from the file system. */
export const migrations: Record<string, Migration> = {
  '0001-initial': initial,
  '0002-next-signing-key': nextSigningKey
}
