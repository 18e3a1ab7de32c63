import { randomUUID } from 'node:crypto'
import { sql, type Transaction, type UpdateResult } from 'kysely'
import type { Database } from '../../db/types.ts'
import type { Config } from '../../config.ts'
import type { Db, Executor } from '../../db/index.ts'
import { InvalidCredentialsError, NotFoundError, TokenNotValidError } from '../../errors.ts'
import { epochSeconds as seconds, type Clock } from '../../lib/clock.ts'
import { grouped } from '../../lib/grouped.ts'
import { SecretBox } from '../../lib/secret-box.ts'
import type { TokenPair } from '../../schemas.ts'
import type { AuditTrail, Caller, Device } from '../audit.ts'
import { authContextOf, type AuthContext, type TokenClaims } from '../auth/claims.ts'
import type { Keyring } from '../keys/keyring.ts'
import type { SessionCache, SessionUser } from './cache.ts'
import { activeUsers, SESSION_USER_COLUMNS, sessionUsers, type UserWithRoles } from '../accounts/users.ts'

export type { Executor }

/**
 * What a session starts from: the user a credential proved, and, for a password, the hash it
 * was checked against, which must still be the stored one.
 */
export interface Credential { userId: number, passwordHash?: string, /** The user's roles as read with the credential: the first pair's. */ roles: string[] }

/** An active session as its user sees it in the session list. */
export interface SessionInfo {
  id: string
  created_at: Date
  last_seen_at: Date
  user_agent: string | null
  ip: string | null
}

/** Which sessions of a user a sign-out ends: this one, all but this one, or all. */
export type RevokeScope = 'current' | 'others' | 'global'

// What authgate_refresh answers for one token: see migrations/0005-refresh-function.ts and 0009.
interface RotateAnswer {
  outcome: 'invalid' | 'rotated' | 'replayed' | 'reused' | 'resign'
  owner_id: number | null
  successor: string | null
  session_end: Date | null
  roles: string[] | null
}

// One token to rotate: authgate_refresh's arguments (migrations/0018-refresh-batch.ts).
interface RotateItem {
  jti: string
  sid: string
  user_id: number
  session_end: number | null
  roles: string[]
  next_jti: string | null
  next_exp: number | null
  successor: string | null
}

// How many groups of refreshes a replica has at the database at once: more made smaller groups,
// and cost PostgreSQL more per refresh (BENCHMARKS.md: 5 against 1 and 2).
const ROTATION_GROUPS = 2

// Another replica's group locked two sessions of this one's in the other order.
const isDeadlock = (error: unknown): boolean => (error as { code?: unknown } | null)?.code === '40P01'

export interface SessionsDeps {
  db: Db
  keyring: Keyring
  clock: Clock
  config: Pick<Config, 'accessTtlS' | 'refreshTtlS' | 'sessionMaxS' | 'AUTH_REUSE_GRACE_S' | 'SECRET_KEY'>
  audit: AuditTrail
  /** The users of active sessions, kept on this replica (PostgreSQL); none, each check reads the database. */
  cache?: SessionCache
  /** Hears of each pair issued (metrics): a sign-in's, a rotation's; not a replay's. */
  onIssue?: () => void
}

/** What names a session in a token: the session and its user (a user's token, or one exchanged for it). */
export type SessionOf = Pick<TokenClaims, 'sid' | 'user_id'>

/**
 * Sessions and their tokens. A session row holds the absolute end of the session; each
 * refresh token is a row of it, used once. Event times (created, seen, used, revoked) and the
 * reuse grace come from the database clock, the same for every replica; token lifetimes from
 * the application clock that also checks them.
 */
export function createSessions ({ db, keyring, clock, config, audit, cache, onIssue }: SessionsDeps) {
  // Seals the pair a refresh issued, to answer a retry within the grace with the same pair.
  const box = new SecretBox(config.SECRET_KEY, 'refresh-successor')

  // Neither token outlives the session: its end caps both expiries. The refresh token carries
  // that end (sxp), so the next refresh can sign its pair before it reaches the database.
  // Both carry the user's roles, if any: the access token for its verifiers, the refresh token
  // so that the next refresh can tell whether they changed. None, no claim: a token stays short
  // (mod_auth_openidc's cache takes keys of up to 511 bytes: docs/tokens.md).
  // The sign-in's context (aal, amr, auth_time) goes into both, so a refresh keeps it; a token
  // issued before it existed passes on none.
  function signPair (userId: number, sessionId: string, refreshJti: string, refreshExp: number, sessionEnd: number, roles: string[], auth: AuthContext | undefined): TokenPair {
    const iat = seconds(clock.now())
    const common = { user_id: userId, sub: String(userId), sid: sessionId, iat, ...(roles.length === 0 ? {} : { roles }), ...auth }
    return {
      refresh: keyring.sign({ ...common, token_type: 'refresh', jti: refreshJti, exp: refreshExp, sxp: sessionEnd }),
      access: keyring.sign({ ...common, token_type: 'access', jti: randomUUID(), exp: Math.min(iat + config.accessTtlS, sessionEnd) })
    }
  }

  const refreshExpiry = (sessionEnd: number): number =>
    Math.min(seconds(clock.now()) + config.refreshTtlS, sessionEnd)

  // Rotations in one statement, one transaction, one commit (authgate_refresh_many, migrations/
  // 0018-refresh-batch.ts), sorted by session so that two groups lock the sessions they share in
  // one order. The clock's offset from the database's own clock (0 for the system clock) is added
  // to the clock_timestamp() each rotation reads once it holds its locks.
  async function rotateAll (items: RotateItem[]): Promise<RotateAnswer[]> {
    const numbered = items.map((item, n) => ({ ...item, n })).sort((a, b) => a.sid < b.sid ? -1 : a.sid > b.sid ? 1 : a.n - b.n)
    const { rows } = await sql<RotateAnswer & { item: number }>`select item, outcome, owner_id, successor, session_end, roles from authgate_refresh_many(
      cast(${JSON.stringify(numbered)} as jsonb), cast(${config.AUTH_REUSE_GRACE_S} as double precision), cast(${clock.offsetS()} as double precision))`.execute(db)
    const answers: RotateAnswer[] = []
    for (const row of rows) answers[row.item] = row
    return answers
  }

  // Concurrent refreshes of this replica go together (src/lib/grouped.ts): one alone when the
  // database is idle, a group per commit when it is busy, two groups at most at once (one at
  // work while the other commits). A session is in one group at a time: two
  // refreshes of one session race inside one transaction, in the order they came, never across
  // two that would wait for each other's locks. Only another replica's group can deadlock with
  // one of these (PostgreSQL ends one of the two after a second; nothing of it was done): its
  // rotations then run again, one by one.
  const rotateTogether = grouped(async (items: RotateItem[]) => {
    try {
      return await rotateAll(items)
    } catch (error) {
      if (!isDeadlock(error)) throw error
      const answers: RotateAnswer[] = []
      for (const item of items) answers.push((await rotateAll([item]))[0]!)
      return answers
    }
  }, { running: ROTATION_GROUPS, max: 100, key: (item) => item.sid })

  // Rotates one token: the next pair, signed for the session end `sessionEnd` and the roles
  // `roles` and sealed as the answer to a retry within the grace, goes with it; it is used only
  // if the token is unused, that end is the session's and those roles the user's.
  async function rotate (claims: TokenClaims, sessionEnd: number | undefined, roles: string[]): Promise<{ answer: RotateAnswer, pair?: TokenPair }> {
    let next: { jti: string, exp: number, pair: TokenPair, sealed: string } | undefined
    if (sessionEnd !== undefined) {
      const jti = randomUUID()
      const exp = refreshExpiry(sessionEnd)
      const auth = claims.aal === undefined ? undefined : authContextOf(claims)
      const pair = signPair(claims.user_id, claims.sid, jti, exp, sessionEnd, roles, auth)
      next = { jti, exp, pair, sealed: box.seal(JSON.stringify(pair), claims.jti) }
    }
    const answer = await rotateTogether({
      jti: claims.jti,
      sid: claims.sid,
      user_id: claims.user_id,
      session_end: sessionEnd ?? null,
      roles,
      next_jti: next?.jti ?? null,
      next_exp: next?.exp ?? null,
      successor: next?.sealed ?? null
    })
    return { answer, pair: next?.pair }
  }

  // The session, joined to its user, if it is active: not revoked, not ended, user active.
  const activeSession = (sessionId: string, userId: number) => db.selectFrom('sessions as s')
    .innerJoin(sessionUsers().as('u'), 'u.id', 's.user_id')
    .where('s.id', '=', sessionId)
    .where('s.user_id', '=', userId)
    .where('s.revoked_at', 'is', null)
    .where('s.expires_at', '>', clock.db())

  // Ends sessions of a user that are still open; the caller narrows which.
  const endSessions = (userId: number, executor: Executor = db) => executor.updateTable('sessions')
    .set({ revoked_at: clock.db() })
    .where('user_id', '=', userId)
    .where('revoked_at', 'is', null)
  const count = (result: UpdateResult): number => Number(result.numUpdatedRows)

  // Forgotten before the revocation and after it: a read that raced it and kept the old state is dropped.
  async function forgetting<T> (forget: (cache: SessionCache) => void, revoke: () => Promise<T>): Promise<T> {
    if (cache !== undefined) forget(cache)
    try {
      return await revoke()
    } finally {
      if (cache !== undefined) forget(cache)
    }
  }

  async function readUser (claims: SessionOf): Promise<SessionUser | undefined> {
    const user = await activeSession(claims.sid, claims.user_id).select(SESSION_USER_COLUMNS.map((c) => `u.${c}` as const)).executeTakeFirst()
    return user === undefined ? undefined : { ...user, sessionId: claims.sid }
  }

  /** The user of the access token's session, if that session is active: from the cache when it may be trusted. */
  async function userOf (claims: SessionOf): Promise<SessionUser | undefined> {
    if (cache === undefined) return await readUser(claims)
    const cached = cache.of(claims.sid, claims.user_id)
    if (cached !== undefined) return cached
    const generation = cache.generation
    const user = await readUser(claims)
    if (user !== undefined) cache.keep(user, generation)
    return user
  }

  /**
   * Ends a session of the user (`current`), the user's other sessions (`others`), or all of
   * them (`global`); how many it ended. Ending a session already ended is no error.
   */
  async function revoke (userId: number, sessionId: string, scope: RevokeScope, executor: Executor = db): Promise<number> {
    return await forgetting((c) => { if (scope === 'current') c.forget(sessionId); else c.forgetUser(userId) }, async () => {
      const sessions = endSessions(userId, executor)
      return count(await (scope === 'current'
        ? sessions.where('id', '=', sessionId)
        : scope === 'others' ? sessions.where('id', '<>', sessionId) : sessions
      ).executeTakeFirst())
    })
  }

  return {
    /**
     * Opens a session for a user who just proved who they are, and issues its first pair: one
     * statement, which starts the session only while the user is active and, for a password
     * sign-in, the hash checked is still the stored one, holding the user row meanwhile. A
     * password change that lands while a sign-in with the old password checks it thus ends the
     * new session (it commits first and revokes the others after) or refuses it (InvalidCredentialsError).
     * `auth` says how the user signed in: its tokens carry it.
     */
    async start (credential: Credential, device: Device, auth: AuthContext): Promise<{ sessionId: string, pair: TokenPair }> {
      const { userId } = credential
      const sessionId = randomUUID()
      const jti = randomUUID()
      const sessionEnd = seconds(clock.now()) + config.sessionMaxS
      const refreshExp = refreshExpiry(sessionEnd)
      const result = await db
        .with('s', (q) => q.insertInto('sessions')
          .columns(['id', 'user_id', 'created_at', 'last_seen_at', 'expires_at', 'user_agent', 'ip'])
          .expression(activeUsers().select([
            sql<string>`cast(${sessionId} as uuid)`.as('id'),
            'id as user_id',
            clock.db().as('created_at'),
            clock.db().as('last_seen_at'),
            sql<Date>`cast(${new Date(sessionEnd * 1000)} as timestamptz)`.as('expires_at'),
            sql<string | null>`cast(${device.userAgent?.slice(0, 512) ?? null} as text)`.as('user_agent'),
            sql<string | null>`cast(${device.ip} as text)`.as('ip')
          ])
            .where('id', '=', userId)
            .$if(credential.passwordHash !== undefined, (w) => w.where('password_hash', '=', credential.passwordHash!))
            .forShare())
          .returning('id'))
        .insertInto('refresh_tokens')
        .columns(['jti', 'session_id', 'issued_at', 'expires_at'])
        .expression((eb) => eb.selectFrom('s').select([
          sql<string>`cast(${jti} as uuid)`.as('jti'), 's.id', clock.db().as('issued_at'), sql<Date>`cast(${new Date(refreshExp * 1000)} as timestamptz)`.as('expires_at')
        ]))
        .executeTakeFirst()
      if (Number(result.numInsertedOrUpdatedRows ?? 0) !== 1) throw new InvalidCredentialsError()
      const pair = signPair(userId, sessionId, jti, refreshExp, sessionEnd, credential.roles, auth)
      onIssue?.()
      return { sessionId, pair }
    },

    /**
     * Rotates a verified refresh token: marks it used and issues the next pair, with the token
     * and session rows locked, so two concurrent refreshes of one token cannot both mint a
     * pair. A used token presented again within the grace, counted on the database clock from
     * the moment it was used, gets the pair its first use got; after the grace the whole
     * session is revoked (reuse detection), and the revocation is committed. One round trip,
     * shared with the refreshes that came meanwhile (authgate_refresh_many); two for a token
     * without the session's end (issued before sxp), or whose session's end was changed since.
     * Every outcome of a token of ours is in the trail.
     */
    async refresh (claims: TokenClaims, caller: Caller): Promise<TokenPair> {
      const who = { userId: claims.user_id, sessionId: claims.sid }
      let { answer, pair } = await rotate(claims, claims.sxp, claims.roles ?? [])
      // Each time round reads the session's end and the roles: only a change again in between repeats.
      while (answer.outcome === 'resign') ({ answer, pair } = await rotate(claims, seconds(answer.session_end!), answer.roles!))
      switch (answer.outcome) {
        case 'rotated':
          onIssue?.()
          audit.record({ event: 'refresh', ...who }, caller)
          return pair!
        case 'replayed':
          audit.record({ event: 'refresh', ...who, detail: { replayed: true } }, caller)
          return JSON.parse(box.open(answer.successor!, claims.jti)) as TokenPair
        case 'reused':
          cache?.forget(claims.sid)
          audit.record({ event: 'reuse_detected', outcome: 'failure', userId: answer.owner_id, sessionId: claims.sid, detail: { action: 'session revoked' } }, caller)
          throw new TokenNotValidError()
        default:
          // A token of ours whose session has ended: worth a line in the trail, unlike forgeries.
          audit.record({ event: 'refresh', outcome: 'failure', ...who }, caller)
          throw new TokenNotValidError()
      }
    },

    userOf,
    revoke,

    /** Refreshes waiting for a group and groups of them at the database now (metrics); how many there were. */
    rotations: () => rotateTogether.state(),

    /**
     * Runs `change` of the user in a transaction, the user forgotten by this replica's cache
     * before it and again once it committed (the others hear of it from the users trigger), so
     * no read that raced it keeps the user as they were.
     */
    async changingUser<T> (userId: number, change: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
      return await forgetting((c) => c.forgetUser(userId), () => db.transaction().execute(change))
    },

    /** Deletes every session of the user, and with them their refresh tokens, within `executor` (changingUser's: a deleted account's scrub). */
    async removeAll (userId: number, executor: Executor): Promise<void> {
      await executor.deleteFrom('sessions').where('user_id', '=', userId).execute()
    },

    /** Ends the user's open sessions (only `sessionId`, when given) within `executor`; how many it ended. */
    async endAll (userId: number, executor: Executor, sessionId?: string): Promise<number> {
      return count(await endSessions(userId, executor).$if(sessionId !== undefined, (q) => q.where('id', '=', sessionId!)).executeTakeFirst())
    },

    /**
     * Signs out with an access token (verified; an expired one still ends its own session):
     * ends its session (`current`), the user's others, or all. Ending the others takes a live
     * token of an active session. How many sessions it ended.
     */
    async signOut (claims: TokenClaims, scope: RevokeScope, caller: Caller): Promise<number> {
      if (scope !== 'current' && await userOf(claims) === undefined) throw new TokenNotValidError()
      const ended = await revoke(claims.user_id, claims.sid, scope)
      audit.record({ event: 'logout', userId: claims.user_id, sessionId: claims.sid, detail: { scope, ended } }, caller)
      return ended
    },

    /** Ends one session of the signed-in user by its id (signing out another device); NotFoundError when the user has no such active session. */
    async end (user: SessionUser, sessionId: string, caller: Caller): Promise<void> {
      const ended = await forgetting((c) => c.forget(sessionId), async () => count(await endSessions(user.id).where('id', '=', sessionId).executeTakeFirst()))
      // Another user's session and an unknown one answer alike: no oracle of which exists.
      if (ended !== 1) throw new NotFoundError()
      audit.record({ event: 'session_revoked', userId: user.id, sessionId }, caller)
    },

    /**
     * Ends the session of a verified refresh token (simplejwt's blacklist): TokenNotValidError
     * when the token is not one of an active session, so a token blacklisted once is refused the second time.
     */
    async blacklist (claims: TokenClaims, caller: Caller): Promise<void> {
      const ended = await forgetting((c) => c.forget(claims.sid), async () => count(await endSessions(claims.user_id)
        .where('id', '=', claims.sid)
        .where('expires_at', '>', clock.db())
        .where((eb) => eb.exists(eb.selectFrom('refresh_tokens').select('jti').where('jti', '=', claims.jti).where('session_id', '=', claims.sid)))
        .executeTakeFirst()))
      if (ended !== 1) throw new TokenNotValidError()
      audit.record({ event: 'logout', userId: claims.user_id, sessionId: claims.sid }, caller)
    },

    /** The user's active sessions, the newest first. */
    async list (userId: number): Promise<SessionInfo[]> {
      return await db.selectFrom('sessions')
        .select(['id', 'created_at', 'last_seen_at', 'user_agent', 'ip'])
        .where('user_id', '=', userId)
        .where('revoked_at', 'is', null)
        .where('expires_at', '>', clock.db())
        .orderBy('created_at', 'desc')
        .orderBy('id')
        .execute()
    },

    /** Whether the user's session is still active (not ended, not expired, its user active). */
    async isLive (sessionId: string, userId: number): Promise<boolean> {
      return await activeSession(sessionId, userId).select('s.id').executeTakeFirst() !== undefined
    },

    /**
     * The user of a verified token that is still live, in one query: its session active and,
     * for a refresh token, not yet used (a rotated refresh token is spent, whatever its exp says).
     */
    async liveUser (claims: SessionOf & Pick<TokenClaims, 'token_type' | 'jti'>): Promise<UserWithRoles | undefined> {
      if (claims.token_type === 'access') {
        const user = await userOf(claims)
        return user === undefined ? undefined : { id: user.id, username: user.username, email: user.email, roles: user.roles, email_verified_at: user.email_verified_at }
      }
      return await activeSession(claims.sid, claims.user_id).select(SESSION_USER_COLUMNS.map((c) => `u.${c}` as const))
        .innerJoin('refresh_tokens as t', 't.session_id', 's.id').where('t.jti', '=', claims.jti).where('t.used_at', 'is', null)
        .executeTakeFirst()
    }
  }
}

export type Sessions = ReturnType<typeof createSessions>
