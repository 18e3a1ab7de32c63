import type { Kysely } from 'kysely'

// A key published in the JWKS before it signs (keys:rotate --next), so verifiers that cache the
// JWKS know it by the time tokens signed with it arrive.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('signing_keys').addColumn('next', 'boolean', (c) => c.notNull().defaultTo(false)).execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('signing_keys').dropColumn('next').execute()
}
