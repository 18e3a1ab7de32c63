import { Type } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { Kysely, PostgresDialect } from 'kysely'
import { readFile } from 'node:fs/promises'
import { workPool } from '../../db/connections.ts'
import type { Db } from '../../db/index.ts'
import { importableHash } from '../../lib/django-hashers.ts'
import { normalizeUsername, usernameProblem } from '../../lib/usernames.ts'
import { advanceIdSequence, holdersOf, importUser } from './users.ts'

/** The columns of Django's `auth_user` that authgate keeps. */
interface AuthUserTable { id: number, username: string, email: string, password: string, is_active: boolean }
interface DjangoDatabase { auth_user: AuthUserTable }

/** One entry of `manage.py dumpdata auth.user`; the fields authgate does not keep are let through. */
const DumpedUserSchema = Type.Object({
  model: Type.Literal('auth.user'),
  pk: Type.Integer(),
  fields: Type.Object({ username: Type.String(), email: Type.String(), password: Type.String(), is_active: Type.Boolean() })
})

export interface SkippedUser { id: number | null, username: string, why: string }
export interface ImportReport { imported: number, unchanged: number, skipped: SkippedUser[] }

// users.id is a PostgreSQL integer, as Django's AutoField is.
const MAX_ID = 2 ** 31 - 1
const MAX_EMAIL_LENGTH = 254
// An address the login can route as one (it holds an @) and compare as typed: no spaces or control characters.
const EMAIL = /^[^\s\p{Cc}\p{Cs}@]+@[^\s\p{Cc}\p{Cs}@]+$/u

async function readTable (url: string): Promise<{ users: AuthUserTable[], skipped: SkippedUser[] }> {
  // No statement timeout: reading a large table is one long query; an unreachable server still fails fast.
  const django = new Kysely<DjangoDatabase>({ dialect: new PostgresDialect({ pool: workPool(url) }) })
  try {
    const users = await django.selectFrom('auth_user')
      .select(['id', 'username', 'email', 'password', 'is_active'])
      .orderBy('id')
      .execute()
    return { users, skipped: [] }
  } finally {
    await django.destroy()
  }
}

/** The users of a dumpdata file; entries of other models (`dumpdata auth` writes groups and permissions too) are not users. */
async function readDump (path: string): Promise<{ users: AuthUserTable[], skipped: SkippedUser[] }> {
  let entries: unknown
  try {
    entries = JSON.parse(await readFile(path, 'utf8'))
  } catch (error) {
    throw new Error(`cannot read ${path}: ${(error as Error).message}`, { cause: error })
  }
  if (!Array.isArray(entries)) throw new Error(`${path} is not the output of manage.py dumpdata auth.user: not a JSON array`)
  const users: AuthUserTable[] = []
  const skipped: SkippedUser[] = []
  for (const entry of entries as Array<Record<string, unknown> | null>) {
    if (entry?.model !== 'auth.user') continue
    if (Value.Check(DumpedUserSchema, entry)) {
      users.push({ id: entry.pk, ...entry.fields })
      continue
    }
    const { pk, fields } = entry as { pk?: unknown, fields?: { username?: unknown } }
    skipped.push({
      id: Number.isInteger(pk) ? pk as number : null,
      username: typeof fields?.username === 'string' ? fields.username : '',
      // dumpdata --natural-primary leaves the pk out: authgate keeps ids, so it needs them.
      why: pk === undefined ? 'no pk (dumped with --natural-primary): dump again without it' : 'malformed dumpdata entry'
    })
  }
  return { users, skipped }
}

/** Why authgate cannot take this user as it is, or undefined. */
function refusal (user: AuthUserTable, username: string): string | undefined {
  if (user.id < 1 || user.id > MAX_ID) return `id outside authgate's (1 to ${MAX_ID})`
  const invalid = usernameProblem(username)
  if (invalid !== undefined) return `username not valid for authgate after NFKC: ${invalid.replace(/^Enter a valid username: /, '')}`
  if (user.email === '') return 'empty email: authgate signs in by email and needs a unique one'
  if (user.email.length > MAX_EMAIL_LENGTH || !EMAIL.test(user.email)) return `email ${JSON.stringify(user.email)} is not an address authgate can sign in with`
  const hash = importableHash(user.password)
  return hash.ok ? undefined : hash.why
}

/**
 * Imports Django's users from `source`: a postgres:// or postgresql:// URL of the Django
 * database (its `auth_user` table), or the path of a `manage.py dumpdata auth.user` file.
 * Users keep their id, username (NFKC), email, active flag and password hash. Idempotent:
 * a user already imported (same id, username and email) is left as authgate has it since
 * (its hash rehashed at login, its password changed); a user whose id, username or email
 * another authgate user holds, or whom authgate's rules refuse, is skipped with the reason.
 * In one transaction: a failure leaves nothing behind, and the sequence of users.id moves
 * past the imported ids with them.
 */
async function importDjangoUsers (db: Db, source: string): Promise<ImportReport> {
  const { users, skipped } = /^postgres(ql)?:\/\//.test(source) ? await readTable(source) : await readDump(source)
  let imported = 0
  let unchanged = 0
  await db.transaction().execute(async (trx) => {
    for (const user of users) {
      const username = normalizeUsername(user.username)
      const why = refusal(user, username)
      if (why !== undefined) {
        skipped.push({ id: user.id, username: user.username, why })
        continue
      }
      if (await importUser(trx, { id: user.id, username, email: user.email, passwordHash: user.password, isActive: user.is_active }) !== undefined) {
        imported++
        continue
      }
      const holders = await holdersOf(trx, { id: user.id, username, email: user.email })
      const same = holders.find((holder) => holder.id === user.id)
      if (same?.same_username === true && same.same_email) {
        unchanged++
        continue
      }
      const reasons = holders.map((holder) => holder.id === user.id
        ? `id taken by the authgate user ${JSON.stringify(holder.username)} <${holder.email}>`
        : `${[holder.same_username && 'username', holder.same_email && 'email'].filter(Boolean).join(' and ')} taken by the authgate user of id ${holder.id}`)
      skipped.push({ id: user.id, username: user.username, why: reasons.join('; ') || 'a conflicting user changed meanwhile: run the import again' })
    }
    await advanceIdSequence(trx)
  })
  return { imported, unchanged, skipped }
}

/** import:django as a service: `run(source)` imports the users of a Django project (see importDjangoUsers). */
export function createDjangoImport ({ db }: { db: Db }) {
  return {
    run: (source: string): Promise<ImportReport> => importDjangoUsers(db, source)
  }
}
