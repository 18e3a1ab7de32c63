import type { Migration } from 'kysely/migration'
import * as initial from './0001-initial.ts'

/** Every migration, in order: listed here, never discovered from the file system. */
export const migrations: Record<string, Migration> = {
  '0001-initial': initial
}
