import { randomUUID } from 'node:crypto'
import type { Db } from '../db/index.ts'
import { TokenNotValidError } from '../errors.ts'
import type { SecretBox } from '../lib/secret-box.ts'
import type { TokenPair, User } from '../schemas.ts'
import type { Keyring, TokenClaims } from './tokens.ts'

/** What issuing tokens needs: the keys, lifetimes in seconds, and the clock. */
export interface TokenContext {
  keys: Keyring
  /** Seals the pair a refresh issued, to answer a retry within the grace with the same pair. */
  box: SecretBox
  now: () => Date
  accessTtlS: number
  refreshTtlS: number
  /** Absolute cap on a session's life, however often it is refreshed. */
  sessionMaxS: number
  reuseGraceS: number
}

export interface Client { userAgent: string | null, ip: string | null }

const seconds = (date: Date): number => Math.floor(date.getTime() / 1000)
const addSeconds = (date: Date, s: number): Date => new Date(date.getTime() + s * 1000)

function signPair (ctx: TokenContext, userId: number, sessionId: string, refreshJti: string, now: Date, refreshExpires: Date): TokenPair {
  const common = { user_id: userId, sub: String(userId), sid: sessionId, iat: seconds(now) }
  return {
    refresh: ctx.keys.sign({ ...common, token_type: 'refresh', jti: refreshJti, exp: seconds(refreshExpires) }),
    access: ctx.keys.sign({ ...common, token_type: 'access', jti: randomUUID(), exp: seconds(now) + ctx.accessTtlS })
  }
}

/** Opens a session for a user who just proved who they are, and issues its first pair. */
export async function startSession (db: Db, ctx: TokenContext, userId: number, client: Client): Promise<TokenPair> {
  const now = ctx.now()
  const sessionId = randomUUID()
  const jti = randomUUID()
  const sessionExpires = addSeconds(now, ctx.sessionMaxS)
  const refreshExpires = new Date(Math.min(addSeconds(now, ctx.refreshTtlS).getTime(), sessionExpires.getTime()))
  await db.transaction().execute(async (trx) => {
    await trx.insertInto('sessions').values({
      id: sessionId,
      user_id: userId,
      created_at: now,
      last_seen_at: now,
      expires_at: sessionExpires,
      user_agent: client.userAgent?.slice(0, 512) ?? null,
      ip: client.ip
    }).execute()
    await trx.insertInto('refresh_tokens').values({ jti, session_id: sessionId, issued_at: now, expires_at: refreshExpires }).execute()
  })
  return signPair(ctx, userId, sessionId, jti, now, refreshExpires)
}

export type RefreshOutcome =
  | { kind: 'rotated', pair: TokenPair }
  | { kind: 'reused', sessionId: string, userId: number }

/**
 * Rotates a verified refresh token: marks it used and issues the next pair, with the token and
 * session rows locked, so two concurrent refreshes of one token cannot both mint a pair. A used
 * token presented again within the grace gets the pair its first use got; after the grace the
 * whole session is revoked (reuse detection), and the revocation is committed.
 */
export async function refreshSession (db: Db, ctx: TokenContext, claims: TokenClaims): Promise<RefreshOutcome> {
  const now = ctx.now()
  const outcome = await db.transaction().execute(async (trx): Promise<RefreshOutcome | undefined> => {
    const row = await trx.selectFrom('refresh_tokens as t')
      .innerJoin('sessions as s', 's.id', 't.session_id')
      .innerJoin('users as u', 'u.id', 's.user_id')
      .select(['t.used_at', 't.successor_enc', 's.user_id', 's.revoked_at', 's.expires_at', 'u.is_active'])
      .where('t.jti', '=', claims.jti)
      .where('t.session_id', '=', claims.sid)
      .forUpdate(['t', 's'])
      .executeTakeFirst()
    if (row === undefined || row.user_id !== claims.user_id || row.revoked_at !== null ||
        row.expires_at <= now || !row.is_active) {
      return undefined
    }

    if (row.used_at === null) {
      const jti = randomUUID()
      const refreshExpires = new Date(Math.min(addSeconds(now, ctx.refreshTtlS).getTime(), row.expires_at.getTime()))
      const pair = signPair(ctx, row.user_id, claims.sid, jti, now, refreshExpires)
      await trx.updateTable('refresh_tokens')
        .set({ used_at: now, successor_enc: ctx.box.seal(JSON.stringify(pair), claims.jti) })
        .where('jti', '=', claims.jti)
        .execute()
      await trx.insertInto('refresh_tokens').values({ jti, session_id: claims.sid, issued_at: now, expires_at: refreshExpires }).execute()
      await trx.updateTable('sessions').set({ last_seen_at: now }).where('id', '=', claims.sid).execute()
      return { kind: 'rotated', pair }
    }

    if (row.successor_enc !== null && now.getTime() - row.used_at.getTime() <= ctx.reuseGraceS * 1000) {
      return { kind: 'rotated', pair: JSON.parse(ctx.box.open(row.successor_enc, claims.jti)) as TokenPair }
    }

    await trx.updateTable('sessions').set({ revoked_at: now }).where('id', '=', claims.sid).execute()
    return { kind: 'reused', sessionId: claims.sid, userId: row.user_id }
  })
  if (outcome === undefined) throw new TokenNotValidError()
  return outcome
}

// The session, joined to its user, if it is active: not revoked, not expired, user active.
function activeSession (db: Db, sessionId: string, userId: number, now: Date) {
  return db.selectFrom('sessions as s')
    .innerJoin('users as u', 'u.id', 's.user_id')
    .where('s.id', '=', sessionId)
    .where('s.user_id', '=', userId)
    .where('s.revoked_at', 'is', null)
    .where('s.expires_at', '>', now)
    .where('u.is_active', '=', true)
}

/** The user of an active session, or undefined. */
export async function findSessionUser (db: Db, sessionId: string, userId: number, now: Date): Promise<User | undefined> {
  return await activeSession(db, sessionId, userId, now).select(['u.id', 'u.username', 'u.email']).executeTakeFirst()
}

/**
 * Whether a verified token is still live, in one query: its session active and, for a refresh
 * token, not yet used (a rotated refresh token is spent, whatever its exp says).
 */
export async function isTokenLive (db: Db, claims: TokenClaims, now: Date): Promise<boolean> {
  const session = activeSession(db, claims.sid, claims.user_id, now).select('s.id')
  const live = claims.token_type === 'access'
    ? session
    : session.innerJoin('refresh_tokens as t', 't.session_id', 's.id').where('t.jti', '=', claims.jti).where('t.used_at', 'is', null)
  return await live.executeTakeFirst() !== undefined
}
