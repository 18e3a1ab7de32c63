import { randomUUID } from 'node:crypto'
import { sql, type Transaction } from 'kysely'
import type { Config } from '../../config.ts'
import type { Db } from '../../db/index.ts'
import type { Database } from '../../db/types.ts'
import { seconds, type Clock } from '../../lib/clock.ts'
import type { Logger } from '../../lib/logger.ts'
import { SecretBox } from '../../lib/secret-box.ts'
import type { Mail, Mailer } from './mailer.ts'
import type { Executor } from '../sessions/sessions.ts'

/** What a job becomes when its turn comes: its mail, and when the secret it carries expires. */
export interface Prepared { mail: Mail, expiresAt?: Date }

/** A job of an account that may not be sent its mail now (the per-account mail limit): dropped, and said so in the log. */
export interface HeldBack { heldBack: string, userId: number }

/**
 * Makes a job's mail, in the transaction that marks the job prepared (a one-time secret issued
 * there is committed with the sealed mail that carries it; every query goes through `trx`: PGlite
 * has one connection, which the transaction holds). Undefined when there is nothing to send (an
 * address of no account), HeldBack when a limit holds it back: either way the job is dropped.
 */
export type Prepare = (payload: Record<string, unknown>, trx: Transaction<Database>) => Promise<Prepared | HeldBack | undefined>

export interface OutboxDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'SECRET_KEY'>
  mailer: Mailer
  log: Logger
}

// Jobs a worker claims at a time, and how long a claim holds before another worker may retry
// the job (a worker that died while sending).
const CLAIM = 10
const CLAIM_HOLD_S = 60
// Waits between attempts while SMTP fails: 1 s, 2 s, 4 s, ... 5 min.
const retryDelayS = (attempts: number): number => Math.min(2 ** Math.max(attempts - 1, 0), 300)

/**
 * The mail outbox (`mail_outbox`): a request queues a job in the database and answers at once;
 * a worker on each replica claims due jobs (FOR UPDATE SKIP LOCKED, so one replica takes each),
 * prepares each job's mail once, sends it, and deletes the job when SMTP took it. While SMTP
 * fails, the job stays and is tried again with backoff: nothing is lost, and a mail whose secret
 * has expired meanwhile is dropped rather than sent. Payloads and mails are sealed in the table
 * (AES-GCM, bound to the job's id), so no link or code is ever stored or logged in clear.
 */
export function createOutbox ({ db, clock, config, mailer, log }: OutboxDeps) {
  const box = new SecretBox(config.SECRET_KEY, 'mail-outbox')
  const kinds = new Map<string, Prepare>()
  let working: Promise<number> | undefined
  let again = false

  async function claim (): Promise<Array<{ id: string, kind: string, sealed: string, prepared: boolean, attempts: number, expires_at: Date | null }>> {
    return await db.updateTable('mail_outbox')
      .set({ due_at: sql<Date>`${clock.db()} + ${seconds(CLAIM_HOLD_S)}`, attempts: sql<number>`attempts + 1` })
      .where('id', 'in', (eb) => eb.selectFrom('mail_outbox').select('id')
        .where('due_at', '<=', clock.db())
        .orderBy('due_at')
        .limit(CLAIM)
        .forUpdate()
        .skipLocked())
      .returning(['id', 'kind', 'sealed', 'prepared', 'attempts', 'expires_at'])
      .execute()
  }

  // The job's mail: made now if it was not yet (then sealed in its place), or opened.
  async function mailOf (job: { id: string, kind: string, sealed: string, prepared: boolean, expires_at: Date | null }): Promise<Prepared | undefined> {
    const opened = JSON.parse(box.open(job.sealed, job.id)) as Record<string, unknown>
    if (job.prepared) return { mail: opened as unknown as Mail, ...(job.expires_at === null ? {} : { expiresAt: job.expires_at }) }
    const prepare = kinds.get(job.kind)
    if (prepare === undefined) throw new Error(`no mail of kind ${job.kind} is known`)
    return await db.transaction().execute(async (trx) => {
      const prepared = await prepare(opened, trx)
      if (prepared === undefined || 'heldBack' in prepared) {
        // Said in the log only: an answer that told would tell who has an account.
        if (prepared !== undefined) log.info({ job: job.id, kind: job.kind, userId: prepared.userId }, `mail dropped: ${prepared.heldBack}`)
        await trx.deleteFrom('mail_outbox').where('id', '=', job.id).execute()
        return undefined
      }
      await trx.updateTable('mail_outbox')
        .set({ sealed: box.seal(JSON.stringify(prepared.mail), job.id), prepared: true, expires_at: prepared.expiresAt ?? null })
        .where('id', '=', job.id).execute()
      return prepared
    })
  }

  async function deliver (job: Awaited<ReturnType<typeof claim>>[number]): Promise<boolean> {
    try {
      const prepared = await mailOf(job)
      if (prepared === undefined) return false
      if (prepared.expiresAt !== undefined && prepared.expiresAt <= clock.now()) {
        log.warn({ job: job.id, kind: job.kind, attempts: job.attempts }, 'mail dropped: its secret expired before SMTP took it')
        await db.deleteFrom('mail_outbox').where('id', '=', job.id).execute()
        return false
      }
      await mailer.send(prepared.mail)
      await db.deleteFrom('mail_outbox').where('id', '=', job.id).execute()
      return true
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      const waitS = retryDelayS(job.attempts)
      log.warn({ job: job.id, kind: job.kind, attempts: job.attempts, retryInS: waitS, err: { message } }, 'mail not sent yet: will try again')
      await db.updateTable('mail_outbox')
        .set({ due_at: sql<Date>`${clock.db()} + ${seconds(waitS)}`, last_error: message.slice(0, 500) })
        .where('id', '=', job.id).execute()
        .catch((failed: unknown) => log.warn({ err: failed }, 'the outbox could not record a failed attempt'))
      return false
    }
  }

  // Claims and delivers until nothing is due; the number of mails SMTP took.
  async function drain (): Promise<number> {
    let sent = 0
    for (;;) {
      const jobs = await claim()
      for (const job of jobs) if (await deliver(job)) sent++
      if (jobs.length < CLAIM) return sent
    }
  }

  /** One pass of the worker at a time; a kick during a pass makes one more pass. Never rejects. */
  function work (): Promise<number> {
    if (working !== undefined) {
      again = true
      return working
    }
    working = (async () => {
      let sent = 0
      do {
        again = false
        sent += await drain().catch((error: unknown) => {
          log.warn({ err: error }, 'the mail outbox could not be read')
          return 0
        })
      } while (again)
      return sent
    })().finally(() => { working = undefined })
    return working
  }

  return {
    /** The mail of a kind of job: how its payload becomes a mail when its turn comes. */
    define (kind: string, prepare: Prepare): void {
      kinds.set(kind, prepare)
    },

    /**
     * Queues a job of `kind` (sealed), due now, for the next pass of a worker (within a second):
     * the request does no other work for it, so its time is the same whatever the job finds.
     * `kick` starts this replica's pass at once, for a mail nobody can time (once a transaction committed).
     */
    async enqueue (kind: string, payload: Record<string, unknown>, executor: Executor = db): Promise<void> {
      if (!kinds.has(kind)) throw new Error(`no mail of kind ${kind} is known`)
      const id = randomUUID()
      await executor.insertInto('mail_outbox').values({
        id, kind, sealed: box.seal(JSON.stringify(payload), id), created_at: clock.db(), due_at: clock.db()
      }).execute()
    },

    /** Starts a pass of this replica's worker now. */
    kick (): void {
      setImmediate(() => { work().catch(() => {}) })
    },

    /** A pass of the worker: every due job tried once; the number sent. The timer of createServices runs it each second. */
    work,

    /** Settles once the pass under way, if any, is over. */
    async idle (): Promise<void> {
      await working
    },

    /** Jobs waiting, for /metrics and the tests. */
    async waiting (): Promise<number> {
      const { n } = await db.selectFrom('mail_outbox').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow()
      return Number(n)
    }
  }
}

export type Outbox = ReturnType<typeof createOutbox>
