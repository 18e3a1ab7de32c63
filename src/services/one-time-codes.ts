import { createHash, createHmac, randomBytes, randomInt, randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import { seconds, type Clock } from '../lib/clock.ts'
import { subkey } from '../lib/subkeys.ts'
import type { Executor } from './sessions.ts'

/** What a single-use secret is for: each purpose's secrets are spent only by its own flow. */
export type CodePurpose = 'email_verification' | 'password_reset' | 'email_sign_in' | 'mfa_challenge'

export interface IssueOptions {
  purpose: CodePurpose
  userId: number
  /** How long it may be spent. */
  ttlS: number
  /** A link token (256 bits, for the URL fragment), a short code (6 digits, to type), or both. */
  with: { token?: boolean, code?: boolean }
  /** Wrong codes it takes before it is dead. */
  maxAttempts?: number
  /** The older open ones of the purpose stay open (a second step of each device's sign-in); cancelled by default. */
  keepOthers?: boolean
  detail?: Record<string, unknown>
}

/** A secret as its mail carries it: shown once, never stored. */
export interface Issued { id: string, token?: string, code?: string, expiresAt: Date }

/** A secret spent: its user, and what it was issued with. */
export interface Spent { id: string, userId: number, detail: Record<string, unknown> | null }

export interface OneTimeCodesDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'SECRET_KEY'>
}

const CODE_DIGITS = 6
// Mails of one purpose a user may be sent: one a minute, five an hour (mayMail).
const MAILS_PER_MINUTE = 1
const MAILS_PER_HOUR = 5

/**
 * The one table and service of every single-use secret (`one_time_codes`): a link token, stored
 * as its SHA-256, and a short code, stored as an HMAC under a key derived from SECRET_KEY (a
 * pepper the database never holds: six digits are otherwise found from their hash at once).
 * Issuing one cancels the purpose's open ones of that user; each is spent by one guarded UPDATE,
 * so two concurrent attempts never both succeed; a wrong code counts, and `maxAttempts` of them
 * kill it. Nothing here is spent by reading: `inspect` says whether a token is still good.
 */
export function createOneTimeCodes ({ db, clock, config }: OneTimeCodesDeps) {
  const pepper = subkey(config.SECRET_KEY, 'one-time-codes')
  const tokenHash = (token: string): string => createHash('sha256').update(token).digest('base64url')
  const codeHash = (userId: number, purpose: CodePurpose, code: string): string => createHmac('sha256', pepper).update(`${userId}:${purpose}:${code}`).digest('base64url')
  // Open: not spent, not dead, not expired, of that purpose.
  const open = (purpose: CodePurpose) => db.updateTable('one_time_codes')
    .where('purpose', '=', purpose)
    .where('consumed_at', 'is', null)
    .where('expires_at', '>', clock.db())
    .where((eb) => eb('attempts', '<', eb.ref('max_attempts')))

  return {
    /** A new secret of `purpose` for the user, the older open ones of that purpose cancelled in the same transaction (unless `keepOthers`). */
    async issue (options: IssueOptions, executor: Executor = db): Promise<Issued> {
      const id = randomUUID()
      const token = options.with.token === true ? randomBytes(32).toString('base64url') : undefined
      const code = options.with.code === true ? String(randomInt(10 ** CODE_DIGITS)).padStart(CODE_DIGITS, '0') : undefined
      const expiresAt = new Date(clock.now().getTime() + options.ttlS * 1000)
      const write = async (trx: Executor): Promise<void> => {
        if (options.keepOthers !== true) {
          await trx.updateTable('one_time_codes').set({ consumed_at: clock.db() })
            .where('user_id', '=', options.userId).where('purpose', '=', options.purpose).where('consumed_at', 'is', null)
            .execute()
        }
        await trx.insertInto('one_time_codes').values({
          id,
          purpose: options.purpose,
          user_id: options.userId,
          token_hash: token === undefined ? null : tokenHash(token),
          code_hash: code === undefined ? null : codeHash(options.userId, options.purpose, code),
          max_attempts: options.maxAttempts ?? 5,
          created_at: clock.db(),
          expires_at: sql<Date>`${clock.db()} + ${seconds(options.ttlS)}`,
          detail: options.detail === undefined ? null : JSON.stringify(options.detail)
        }).execute()
      }
      if (executor === db) await db.transaction().execute(write)
      else await write(executor)
      return { id, token, code, expiresAt }
    },

    /** Spends the token of a link, once: its user, or undefined (unknown, spent, dead, expired). */
    async spendToken (purpose: CodePurpose, token: string): Promise<Spent | undefined> {
      const row = await open(purpose).set({ consumed_at: clock.db() })
        .where('token_hash', '=', tokenHash(token))
        .returning(['id', 'user_id', 'detail'])
        .executeTakeFirst()
      return row === undefined ? undefined : { id: row.id, userId: row.user_id, detail: row.detail }
    },

    /**
     * Spends the user's open code of `purpose`, once, if `code` is it; a wrong code counts
     * against it: one statement either way, so parallel guesses are each counted and two right
     * ones spend it once. Undefined when it is not the code, or there is no open one. With
     * `spend: false`, a right code is only found right (a flow that checks more before it spends).
     */
    async spendCode (purpose: CodePurpose, userId: number, code: string, { spend = true } = {}): Promise<Spent | undefined> {
      const hash = codeHash(userId, purpose, code)
      const row = await open(purpose)
        .where('user_id', '=', userId)
        .where('code_hash', 'is not', null)
        .set({
          consumed_at: spend ? sql<Date>`case when code_hash = ${hash} then ${clock.db()} end` : sql<Date | null>`null`,
          attempts: sql<number>`attempts + case when code_hash = ${hash} then 0 else 1 end`
        })
        .returning(['id', 'user_id', 'detail', sql<boolean>`code_hash = ${hash}`.as('right')])
        .executeTakeFirst()
      return row?.right === true ? { id: row.id, userId: row.user_id, detail: row.detail } : undefined
    },

    /**
     * Whether another secret of `purpose` may be mailed to the user: at most one a minute and
     * five an hour, counting the cancelled and spent ones. Past that, a flow drops the request
     * silently (its answer stays the same: a limit that answered would tell who has an account).
     */
    async mayMail (userId: number, purpose: CodePurpose, executor: Executor = db): Promise<boolean> {
      const { minute, hour } = await executor.selectFrom('one_time_codes')
        .select([
          sql<string>`count(*) filter (where created_at > ${clock.db()} - interval '1 minute')`.as('minute'),
          sql<string>`count(*)`.as('hour')
        ])
        .where('user_id', '=', userId).where('purpose', '=', purpose)
        .where('created_at', '>', sql<Date>`${clock.db()} - interval '1 hour'`)
        .executeTakeFirstOrThrow()
      return Number(minute) < MAILS_PER_MINUTE && Number(hour) < MAILS_PER_HOUR
    },

    /** Whether a link's token may still be spent, without spending it: the secret's id, user, end and detail. */
    async inspect (purpose: CodePurpose, token: string): Promise<{ id: string, userId: number, expiresAt: Date, detail: Record<string, unknown> | null } | undefined> {
      const row = await db.selectFrom('one_time_codes').select(['id', 'user_id', 'expires_at', 'detail'])
        .where('purpose', '=', purpose)
        .where('token_hash', '=', tokenHash(token))
        .where('consumed_at', 'is', null)
        .where('expires_at', '>', clock.db())
        .where((eb) => eb('attempts', '<', eb.ref('max_attempts')))
        .executeTakeFirst()
      return row === undefined ? undefined : { id: row.id, userId: row.user_id, expiresAt: row.expires_at, detail: row.detail }
    },

    /** A wrong try at the open secret `id` (checked by its flow, as a second step's code): counted; `maxAttempts` of them kill it. */
    async fail (purpose: CodePurpose, id: string): Promise<void> {
      await open(purpose).set({ attempts: sql<number>`attempts + 1` }).where('id', '=', id).execute()
    },

    /** Spends the open secret `id` once: whether this call spent it (of two at once, one does). */
    async spend (purpose: CodePurpose, id: string): Promise<boolean> {
      const result = await open(purpose).set({ consumed_at: clock.db() }).where('id', '=', id).executeTakeFirst()
      return result.numUpdatedRows === 1n
    }
  }
}

export type OneTimeCodes = ReturnType<typeof createOneTimeCodes>
