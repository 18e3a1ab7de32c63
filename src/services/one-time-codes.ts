import { createHash, createHmac, randomBytes, randomInt, randomUUID } from 'node:crypto'
import { sql, type ExpressionBuilder } from 'kysely'
import type { Config } from '../config.ts'
import type { Db } from '../db/index.ts'
import type { Database } from '../db/types.ts'
import { seconds, type Clock } from '../lib/clock.ts'
import { subkey } from '../lib/subkeys.ts'
import { emailOfUser, findActive, idOfEmail } from './accounts/users.ts'
import type { HeldBack, Prepared } from './mail/outbox.ts'
import type { MailTemplate, MailTemplates } from './mail/templates.ts'
import type { Executor } from './sessions/sessions.ts'

/** What a single-use secret is for: each purpose's secrets are spent only by its own flow. */
export type CodePurpose = 'email_verification' | 'password_reset' | 'email_sign_in' | 'mfa_challenge' | 'upstream_flow' | 'passkey_registration' | 'passkey_authentication'

export interface IssueOptions {
  purpose: CodePurpose
  userId: number
  /** How long it may be spent. */
  ttlS: number
  /** A link token (256 bits, for the URL fragment), a short code (6 digits, to type), or both. */
  with: { token?: boolean, code?: boolean }
  /** Wrong codes it takes before its code is dead (a secret with no code: tries before it is dead). */
  maxAttempts?: number
  /** The older open ones of the purpose stay open (a second step of each device's sign-in); cancelled by default. */
  keepOthers?: boolean
  detail?: Record<string, unknown>
}

/** A secret as its mail carries it: shown once, never stored. */
export interface Issued { id: string, token?: string, code?: string, expiresAt: Date }

/** An open secret found: its id, its user (every purpose but a flow's has one: spendFlow spends those), and what it was issued with. */
export interface Found { id: string, userId: number, detail: Record<string, unknown> | null }

/** A mail of a one-time secret: what differs between the flows that send one. */
export interface SecretMail {
  purpose: CodePurpose
  /** The active user it goes to: by id, or by the address asked for; `unverified`: only while that address is not verified yet. */
  to: { userId: number } | { email: string }
  unverified?: boolean
  ttlS: number
  with: { token?: boolean, code?: boolean }
  /** The page of the link, if the mail has one: the token goes in its fragment, which mail scanners never send. */
  link?: string
  template: MailTemplate
  /** The template's values besides the username and the secret's (link, code). */
  values: Record<string, string>
  /** What the secret is issued with, for the user it goes to. */
  detail?: (user: { email: string }) => Record<string, unknown>
}

export interface OneTimeCodesDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'SECRET_KEY'>
  templates: MailTemplates
}

const CODE_DIGITS = 6
// Mails of one purpose a user may be sent: one a minute, five an hour (mayMail).
const MAILS_PER_MINUTE = 1
const MAILS_PER_HOUR = 5
/** Why a mail mayMail refused is dropped, as the log says it. */
export const HELD_BACK = 'the per-account mail limit (one a minute, five an hour of a kind) holds it back'
/** How far back mayMail counts: a secret older than this and over (spent, expired) may be deleted. */
export const MAIL_LIMIT_WINDOW_S = 3600
// No account has this id (identities start at 1): an address of no account is tried against it.
const NO_USER = 0
// The tries of a mailed code, and of an address with no open code.
const DEFAULT_TRIES = 5

/**
 * The one table and service of every single-use secret (`one_time_codes`): a link token, stored
 * as its SHA-256, and a short code, stored as an HMAC under a key derived from SECRET_KEY (a
 * pepper the database never holds: six digits are otherwise found from their hash at once).
 * Issuing one cancels the purpose's open ones of that user; each is spent by one guarded UPDATE,
 * so two concurrent attempts never both succeed; a try is counted before it is judged (a mailed
 * code's per address typed, an mfa_token's on its row), and `maxAttempts` tries kill the code,
 * never the link beside it. Nothing here is spent by reading: `inspect` says whether a token is
 * still good.
 */
export function createOneTimeCodes ({ db, clock, config, templates }: OneTimeCodesDeps) {
  const pepper = subkey(config.SECRET_KEY, 'one-time-codes')
  const tokenHash = (token: string): string => createHash('sha256').update(token).digest('base64url')
  const codeHash = (userId: number, purpose: CodePurpose, code: string): string => createHmac('sha256', pepper).update(`${userId}:${purpose}:${code}`).digest('base64url')
  // Open: not spent, not expired, of that purpose.
  const open = (purpose: CodePurpose, executor: Executor = db) => executor.updateTable('one_time_codes')
    .where('purpose', '=', purpose)
    .where('consumed_at', 'is', null)
    .where('expires_at', '>', clock.db())
  // With tries left: `attempt` counts an mfa_token's (its tries are the second factor's codes),
  // which end it. A mailed code's tries are counted per address (tryCode), never on its row: they
  // end the code, never the link beside it (nobody guesses 256 bits, and a wrong code typed with
  // someone's address must not spend the link in their mail).
  const triesLeft = (eb: ExpressionBuilder<Database, 'one_time_codes'>) => eb('attempts', '<', eb.ref('max_attempts'))

  /** A new secret of `purpose` for the user, the older open ones of that purpose cancelled in the same transaction (unless `keepOthers`). */
  async function issue (options: IssueOptions, executor: Executor = db): Promise<Issued> {
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
      // A new mail's code starts with all its tries.
      if (code !== undefined) {
        await trx.deleteFrom('mail_code_tries').where('purpose', '=', options.purpose)
          .where('email', '=', emailOfUser(options.userId))
          .execute()
      }
      await trx.insertInto('one_time_codes').values({
        id,
        purpose: options.purpose,
        user_id: options.userId,
        token_hash: token === undefined ? null : tokenHash(token),
        code_hash: code === undefined ? null : codeHash(options.userId, options.purpose, code),
        max_attempts: options.maxAttempts ?? DEFAULT_TRIES,
        created_at: clock.db(),
        expires_at: sql<Date>`${clock.db()} + ${seconds(options.ttlS)}`,
        detail: options.detail === undefined ? null : JSON.stringify(options.detail)
      }).execute()
    }
    if (executor === db) await db.transaction().execute(write)
    else await write(executor)
    return { id, token, code, expiresAt }
  }

  /**
   * Whether another secret of `purpose` may be mailed to the user: at most one a minute and
   * five an hour, counting the cancelled and spent ones. Past that, a flow drops the request
   * (its answer stays the same: a limit that answered would tell who has an account) and says
   * so in the log (HELD_BACK).
   */
  async function mayMail (userId: number, purpose: CodePurpose, executor: Executor = db): Promise<boolean> {
    const { minute, hour } = await executor.selectFrom('one_time_codes')
      .select([
        sql<string>`count(*) filter (where created_at > ${clock.db()} - interval '1 minute')`.as('minute'),
        sql<string>`count(*)`.as('hour')
      ])
      .where('user_id', '=', userId).where('purpose', '=', purpose)
      .where('created_at', '>', sql<Date>`${clock.db()} - ${seconds(MAIL_LIMIT_WINDOW_S)}`)
      .executeTakeFirstOrThrow()
    return Number(minute) < MAILS_PER_MINUTE && Number(hour) < MAILS_PER_HOUR
  }

  return {
    issue,

    /** Deletes every one-time secret of the user, spent or not (a deleted account's scrub, within `executor`). */
    async removeAll (userId: number, executor: Executor): Promise<void> {
      await executor.deleteFrom('one_time_codes').where('user_id', '=', userId).execute()
    },

    /** Spends the token of a link, once: its secret, or undefined (unknown, spent, expired, cancelled). */
    async spendToken (purpose: CodePurpose, token: string, executor: Executor = db): Promise<Found | undefined> {
      const row = await open(purpose, executor).set({ consumed_at: clock.db() })
        .where('token_hash', '=', tokenHash(token))
        .where(triesLeft)
        .returning(['id', 'user_id', 'detail'])
        .executeTakeFirst()
      return row === undefined ? undefined : { id: row.id, userId: row.user_id!, detail: row.detail }
    },

    /**
     * A flow's secret (an upstream sign-in's, a passkey's challenge): a token only, of a user (a link's) or of none yet,
     * with what the flow needs to finish; only spendFlow spends it, and nothing cancels it.
     */
    async issueFlow (purpose: CodePurpose, { userId, ttlS, detail }: { userId: number | null, ttlS: number, detail: Record<string, unknown> }): Promise<string> {
      const token = randomBytes(32).toString('base64url')
      await db.insertInto('one_time_codes').values({
        id: randomUUID(),
        purpose,
        user_id: userId,
        token_hash: tokenHash(token),
        code_hash: null,
        max_attempts: DEFAULT_TRIES,
        created_at: clock.db(),
        expires_at: sql<Date>`${clock.db()} + ${seconds(ttlS)}`,
        detail: JSON.stringify(detail)
      }).execute()
      return token
    },

    /** Spends the token of a flow (an upstream sign-in's, a passkey's challenge), once: what it was issued with, or undefined (unknown, spent, expired). */
    async spendFlow (purpose: CodePurpose, token: string): Promise<{ userId: number | null, detail: Record<string, unknown> } | undefined> {
      const row = await open(purpose).set({ consumed_at: clock.db() })
        .where('token_hash', '=', tokenHash(token))
        .returning(['user_id', 'detail'])
        .executeTakeFirst()
      return row === undefined ? undefined : { userId: row.user_id, detail: row.detail ?? {} }
    },

    /**
     * Tries `code` against the open code of `purpose` mailed to the account of `email`: the
     * secret if it is the code (not spent: `spend` it once the flow has checked the rest), else
     * undefined. The try is counted for the address before the code is judged, in one guarded
     * upsert (mail_code_tries): of parallel tries no more than the code's tries (five) are
     * judged, a wrong code never spends the link beside it, and a new mail starts the count again.
     * An address of no account, or of one with no open code, is counted alike: every try is the
     * same statements and the same one-row write, whoever owns the address, so the time of the
     * answer tells nothing about it.
     */
    async tryCode (purpose: CodePurpose, email: string, code: string): Promise<Found | undefined> {
      return await db.transaction().execute(async (trx) => {
        const userId = await idOfEmail(trx, email) ?? NO_USER
        const openCode = trx.selectFrom('one_time_codes')
          .where('user_id', '=', userId).where('purpose', '=', purpose)
          .where('consumed_at', 'is', null).where('expires_at', '>', clock.db()).where('code_hash', 'is not', null)
        const counted = await trx.insertInto('mail_code_tries')
          .values({ purpose, email, tries: 1, created_at: clock.db() })
          .onConflict((oc) => oc.columns(['purpose', 'email'])
            .doUpdateSet({ tries: sql<number>`mail_code_tries.tries + 1` })
            .where('mail_code_tries.tries', '<', sql<number>`coalesce((${openCode.select('max_attempts').limit(1)}), cast(${DEFAULT_TRIES} as integer))`))
          .returning('tries')
          .executeTakeFirst()
        if (counted === undefined) return undefined
        const row = await openCode.select(['id', 'user_id', 'detail']).where('code_hash', '=', codeHash(userId, purpose, code)).executeTakeFirst()
        return row === undefined ? undefined : { id: row.id, userId: row.user_id!, detail: row.detail }
      })
    },

    mayMail,

    /**
     * Prepares the mail of a one-time secret (an outbox job): the active user it goes to, or
     * nothing for none; held back past the per-account limit (mayMail); else a new secret,
     * its link, and the mail rendered with them, which is good until the secret expires.
     */
    async mail (mail: SecretMail, trx: Executor): Promise<Prepared | HeldBack | undefined> {
      const user = await findActive(trx, mail.to, { unverified: mail.unverified })
      if (user === undefined) return undefined
      if (!await mayMail(user.id, mail.purpose, trx)) return { heldBack: HELD_BACK, userId: user.id }
      const issued = await issue({ purpose: mail.purpose, userId: user.id, ttlS: mail.ttlS, with: mail.with, ...(mail.detail === undefined ? {} : { detail: mail.detail(user) }) }, trx)
      const secret = {
        ...(mail.link === undefined ? {} : { link: `${mail.link}#token=${issued.token!}` }),
        ...(issued.code === undefined ? {} : { code: issued.code })
      }
      return { mail: templates.render(mail.template, user.email, { username: user.username, ...secret, ...mail.values }), expiresAt: issued.expiresAt }
    },

    /** Whether a link's token may still be spent, without spending it: the secret, and when it ends. */
    async inspect (purpose: CodePurpose, token: string): Promise<(Found & { expiresAt: Date }) | undefined> {
      const row = await db.selectFrom('one_time_codes').select(['id', 'user_id', 'expires_at', 'detail'])
        .where('purpose', '=', purpose)
        .where('token_hash', '=', tokenHash(token))
        .where('consumed_at', 'is', null)
        .where('expires_at', '>', clock.db())
        .where(triesLeft)
        .executeTakeFirst()
      return row === undefined ? undefined : { id: row.id, userId: row.user_id!, expiresAt: row.expires_at, detail: row.detail }
    },

    /**
     * Counts a try at the open secret `id` before the try is judged (a second step's code is
     * judged by its flow): whether it was open, with tries left. Of parallel tries, no more than
     * it has left are let through, whatever their codes.
     */
    async attempt (purpose: CodePurpose, id: string): Promise<boolean> {
      const counted = await open(purpose).set({ attempts: sql<number>`attempts + 1` }).where('id', '=', id).where(triesLeft).executeTakeFirst()
      return counted.numUpdatedRows === 1n
    },

    /** Takes back a try `attempt` counted that turned out not to be a guess (a code used already). */
    async takeBack (purpose: CodePurpose, id: string): Promise<void> {
      await open(purpose).set({ attempts: sql<number>`attempts - 1` }).where('id', '=', id).where('attempts', '>', 0).execute()
    },

    /**
     * Spends the secret `id`, found or tried already, once (within `executor`): whether this call
     * spent it (of two at once, one does; the other waits for the first's transaction to end).
     */
    async spend (purpose: CodePurpose, id: string, executor: Executor = db): Promise<boolean> {
      const result = await open(purpose, executor).set({ consumed_at: clock.db() }).where('id', '=', id).executeTakeFirst()
      return result.numUpdatedRows === 1n
    }
  }
}

export type OneTimeCodes = ReturnType<typeof createOneTimeCodes>
