import type { Transaction } from 'kysely'
import { randomInt } from 'node:crypto'
import type { Config } from '../../config.ts'
import type { Db, Executor } from '../../db/index.ts'
import type { Database } from '../../db/types.ts'
import {
  AccountExistsError, clientCode, EmailRequiredError, FlowInvalidError, IdentityNotFoundError, IdentityTakenError, InvalidCredentialsError,
  LastWayInError, ProviderNotFoundError, ReturnUrlNotAllowedError, SessionEndedError
} from '../../errors.ts'
import { epochSeconds, type Clock } from '../../lib/clock.ts'
import { safeEqual } from '../../lib/constant-time.ts'
import { normalizeUsername, usernameProblem } from '../../lib/usernames.ts'
import { proofOf, type PasswordProof } from '../accounts/accounts.ts'
import { activeWithMethods, hasWayIn, idOfEmail, insertUpstreamUser, methodsOfUser, needsSecondStep, recipientOf, recordLastLogin, recordLoginOfSigner } from '../accounts/users.ts'
import { requireRecent, type TokenClaims } from '../auth/claims.ts'
import type { AuditTrail, Caller } from '../audit.ts'
import type { Outbox } from '../mail/outbox.ts'
import type { MailTemplates } from '../mail/templates.ts'
import type { OneTimeCodes } from '../one-time-codes.ts'
import type { Sessions } from '../sessions/sessions.ts'
import type { SignIn, SignInStep } from '../sign-in.ts'
import { deleteIdentity, identitiesOf, insertIdentity, touchIdentity, touchKnownIdentity, userOfIdentity } from './identities.ts'
import { createProviderClient, type ProviderClient, type UpstreamProfile } from './provider-client.ts'

export interface UpstreamDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'upstreamProviders' | 'returnUrls' | 'features'>
  oneTimeCodes: OneTimeCodes
  signIn: SignIn
  sessions: Sessions
  outbox: Outbox
  templates: MailTemplates
  audit: AuditTrail
}

/** How long a browser has between the start of an upstream sign-in and its callback. */
export const FLOW_TTL_S = 600

/** A browser flow to start: where it may end, the callback the provider sends it to, and, for a link, the session it is bound to. */
export interface FlowStart { returnTo: string, redirectUri: string, link?: { userId: number, sessionId: string } }

/** How a callback ended: a sign-in's step, or an identity linked to the session that asked. */
export type FlowOutcome = { kind: 'sign-in', step: SignInStep } | { kind: 'linked', provider: string }

/** A callback that failed where it may say so: the page the flow named, and why. */
export class FlowFailure extends Error {
  override name = 'FlowFailure'
  readonly returnTo: string
  constructor (returnTo: string, cause: unknown) {
    super('the upstream sign-in failed', { cause })
    this.returnTo = returnTo
  }
}

// A retry after a concurrent first sign-in of the same identity linked it first.
class LinkedMeanwhile extends Error {}

const isUniqueViolation = (error: unknown): boolean => (error as { code?: unknown } | null)?.code === '23505'
const MAX_NAME = 30

/** Candidates for a new account's username from what the provider calls the person, best first; each valid as a username. */
function usernamesOf (names: string[]): string[] {
  const bases = names.map((name) => normalizeUsername(name.split('@')[0]!).replace(/\s+/gu, '.').replace(/[^\p{L}\p{N}.+_-]/gu, '').slice(0, MAX_NAME))
    .filter((name) => name !== '' && usernameProblem(name) === undefined)
  const base = bases[0] ?? 'user'
  // Then the best one with digits added: a name taken is common, five taken with random digits is not.
  return [...new Set(bases), ...Array.from({ length: 5 }, () => `${base}${randomInt(1000, 1_000_000)}`)]
}

/**
 * Sign-in with upstream identity providers (docs/sign-in-with-providers.md): the browser flow
 * (started here, bound to the browser by a single-use flow secret in a host-only cookie), the ID
 * token of a native app, and which account an identity is. An identity is (issuer, subject): a
 * known one signs in its user, whatever address it now names; an unknown one whose address is
 * no account's makes an account; one whose address is an account's is never linked to it, unless
 * the operator allowed it for a provider trusted for addresses that asserted it, and the local
 * address is verified too. Linking from a signed-in session is bound to that session.
 */
export function createUpstream ({ db, clock, config, oneTimeCodes, signIn, sessions, outbox, templates, audit }: UpstreamDeps) {
  const clients = new Map<string, ProviderClient>(config.upstreamProviders.map((provider) => [provider.name, createProviderClient(provider)]))
  const clientOf = (name: string): ProviderClient => {
    const client = clients.get(name)
    if (client === undefined) throw new ProviderNotFoundError(name)
    return client
  }

  outbox.define('sign_in_linked', async (payload, trx) => {
    const user = await recipientOf(trx, Number(payload.userId))
    if (user === undefined) return undefined
    return { mail: templates.render('sign-in-linked', user.email, { username: user.username, change: String(payload.change), at: String(payload.at) }) }
  })
  // The notice of a change, queued with it; sent once it committed (outbox.kick).
  const notify = (userId: number, change: string, executor: Executor): Promise<void> =>
    outbox.enqueue('sign_in_linked', { userId, change, at: clock.now().toISOString() }, executor)
  const named = (profile: UpstreamProfile): string => `${profile.provider}${profile.email === undefined ? '' : ` (${profile.email})`}`

  // The address is another account's: that of a concurrent first sign-in of this identity, which
  // committed since this one looked (LinkedMeanwhile: again, to sign in), or someone else's.
  const madeMeanwhile = async (trx: Transaction<Database>, profile: UpstreamProfile): Promise<Error> =>
    await userOfIdentity(trx, profile.issuer, profile.subject) === undefined ? new AccountExistsError() : new LinkedMeanwhile()

  /**
   * Whose the identity is, within `trx`: its user's; else, for an address of no account, a new
   * account; else, where the operator allowed it and both sides proved the address, the
   * address's account, linked. Anything else is account_exists.
   */
  async function resolveIn (trx: Transaction<Database>, profile: UpstreamProfile, linkByEmail: boolean): Promise<{ userId: number, change: 'created' | 'linked' | undefined }> {
    const known = await userOfIdentity(trx, profile.issuer, profile.subject)
    if (known !== undefined) {
      await touchIdentity(trx, known.id, profile, clock.db())
      return { userId: known.user_id, change: undefined }
    }
    if (profile.email === undefined) throw new EmailRequiredError()
    const holder = await idOfEmail(trx, profile.email)
    if (holder !== undefined) {
      const user = await activeWithMethods(trx, holder)
      // All three, or nothing: the operator allowed it, the provider (trusted for addresses)
      // asserted it, and the address was proven here (never a squatter's unverified account
      // with the victim's address). Else the account may be a concurrent first sign-in's of
      // this identity, committed since the lookup above (madeMeanwhile).
      if (!linkByEmail || !profile.emailVerified || user?.email_verified_at == null) throw await madeMeanwhile(trx, profile)
      if (!await insertIdentity(trx, holder, profile, clock.db())) throw new LinkedMeanwhile()
      await notify(holder, `the sign-in with ${named(profile)} was linked to it, by its verified address`, trx)
      return { userId: holder, change: 'linked' }
    }
    let user
    for (const username of usernamesOf(profile.names)) {
      user = await insertUpstreamUser(trx, { username, email: profile.email, verifiedAt: profile.emailVerified ? clock.db() : null })
      if (user !== undefined) break
      // The address was taken meanwhile: by a concurrent first sign-in of this identity
      // (then it is known now: again, to sign in), or by someone's account, as above.
      if (await idOfEmail(trx, profile.email) !== undefined) throw await madeMeanwhile(trx, profile)
    }
    if (user === undefined) throw new AccountExistsError()
    if (!await insertIdentity(trx, user.id, profile, clock.db())) throw new LinkedMeanwhile()
    await notify(user.id, `the account was made by a sign-in with ${named(profile)}`, trx)
    return { userId: user.id, change: 'created' }
  }

  /**
   * The account of an identity (resolveIn), active, its sign-in recorded in the same commit. A
   * concurrent first sign-in of the same identity makes one account: the other retries and finds it.
   */
  async function accountOf (profile: UpstreamProfile, linkByEmail: boolean, caller: Caller): Promise<PasswordProof> {
    // A returning identity of an active user, the usual sign-in: its use and the sign-in in one
    // statement. Anything else (a new identity, an inactive user) takes the transaction below.
    const returning = await recordLoginOfSigner(db.with('signer', (q) => touchKnownIdentity(q, profile, clock.db())), clock.db())
    if (returning !== undefined) return proofOf(returning)
    for (let attempt = 0; ; attempt++) {
      try {
        const { user, change } = await db.transaction().execute(async (trx) => {
          const { userId, change } = await resolveIn(trx, profile, linkByEmail)
          const user = await activeWithMethods(trx, userId)
          if (user === undefined) throw new InvalidCredentialsError()
          await recordLastLogin(trx, userId, clock.db())
          return { user, change }
        })
        if (change === 'created') audit.record({ event: 'register', userId: user.id, detail: { method: 'upstream', provider: profile.provider } }, caller)
        if (change !== undefined) {
          audit.record({ event: 'identity_linked', userId: user.id, detail: { provider: profile.provider, subject: profile.subject, by: change === 'created' ? 'account_creation' : 'email' } }, caller)
          outbox.kick()
        }
        return proofOf(user)
      } catch (error) {
        if (attempt === 0 && (error instanceof LinkedMeanwhile || isUniqueViolation(error))) continue
        if (error instanceof AccountExistsError || error instanceof EmailRequiredError || error instanceof InvalidCredentialsError) {
          audit.record({ event: 'login', outcome: 'failure', identifier: profile.email ?? profile.subject, detail: { method: 'upstream', provider: profile.provider, reason: clientCode(error as { code: string }) } }, caller)
        }
        throw error
      }
    }
  }

  async function signInAs (client: ProviderClient, profile: UpstreamProfile, caller: Caller, cookies: boolean): Promise<SignInStep> {
    const proof = await accountOf(profile, client.provider.linkByEmail, caller)
    return await signIn.upstream(proof, caller, { provider: profile.provider, multiFactor: profile.multiFactor }, { cookies })
  }

  // Links the identity to the user of the session that started the flow, while that session lives.
  async function link (userId: number, sessionId: string, profile: UpstreamProfile, caller: Caller): Promise<void> {
    if (!await sessions.isLive(sessionId, userId)) throw new SessionEndedError()
    const linked = await db.transaction().execute(async (trx) => {
      const known = await userOfIdentity(trx, profile.issuer, profile.subject)
      if (known !== undefined && known.user_id !== userId) throw new IdentityTakenError()
      if (known !== undefined) {
        await touchIdentity(trx, known.id, profile, clock.db())
        return false
      }
      if (!await insertIdentity(trx, userId, profile, clock.db())) throw new IdentityTakenError()
      await notify(userId, `the sign-in with ${named(profile)} was linked to it`, trx)
      return true
    })
    if (linked) {
      audit.record({ event: 'identity_linked', userId, sessionId, detail: { provider: profile.provider, subject: profile.subject, by: 'session' } }, caller)
      outbox.kick()
    }
  }

  /**
   * Starts a browser flow: the provider's authorization URL (state, nonce, PKCE S256), and the
   * flow secret for the browser's cookie. The flow is a single-use secret (one_time_codes) of
   * FLOW_TTL_S that only that cookie spends; a link's names the user and session it binds to.
   */
  async function start (name: string, { returnTo, redirectUri, link: binding }: FlowStart): Promise<{ url: string, flowSecret: string }> {
    const client = clientOf(name)
    if (!config.returnUrls.has(returnTo)) throw new ReturnUrlNotAllowedError()
    const authorization = await client.authorize(redirectUri)
    const flowSecret = await oneTimeCodes.issueFlow('upstream_flow', {
      userId: binding?.userId ?? null,
      ttlS: FLOW_TTL_S,
      detail: {
        provider: name,
        state: authorization.state,
        nonce: authorization.nonce ?? null,
        code_verifier: authorization.codeVerifier,
        redirect_uri: redirectUri,
        return_to: returnTo,
        session_id: binding?.sessionId ?? null
      }
    })
    return { url: authorization.url, flowSecret }
  }

  return {
    /** A sign-in's browser flow. */
    start: (name: string, options: Omit<FlowStart, 'link'>) => start(name, options),

    /**
     * A link's browser flow, bound to the session of `claims`: a way into the account, so it
     * takes a recent sign-in, aal2 for a user with a second factor (as adding one does).
     */
    async startLink (name: string, claims: TokenClaims, options: Omit<FlowStart, 'link'>): Promise<{ url: string, flowSecret: string }> {
      clientOf(name)
      requireRecent(claims, epochSeconds(clock.now()), { aal2: needsSecondStep(await methodsOfUser(db, claims.user_id)) })
      return await start(name, { ...options, link: { userId: claims.user_id, sessionId: claims.sid } })
    },

    /**
     * The provider's callback, in the browser that started the flow: the flow spent once (its
     * cookie), the state compared, the code exchanged and the identity checked, then a sign-in,
     * or a link to the session that started it. No flow: FlowInvalidError (there is no page it
     * may be sent to); any later failure: FlowFailure, with the flow's page.
     */
    async finish (name: string, callback: URLSearchParams, flowSecret: string | undefined, caller: Caller): Promise<{ returnTo: string, outcome: FlowOutcome }> {
      const flow = flowSecret === undefined ? undefined : await oneTimeCodes.spendFlow('upstream_flow', flowSecret)
      if (flow === undefined) throw new FlowInvalidError()
      const detail = flow.detail as { provider: string, state: string, nonce: string | null, code_verifier: string, redirect_uri: string, return_to: string, session_id: string | null }
      const returnTo = detail.return_to
      try {
        if (detail.provider !== name || !safeEqual(callback.get('state') ?? '', detail.state)) throw new FlowInvalidError()
        const client = clientOf(name)
        const profile = await client.finish(callback, { state: detail.state, nonce: detail.nonce ?? undefined, codeVerifier: detail.code_verifier, redirectUri: detail.redirect_uri })
        if (flow.userId !== null && detail.session_id !== null) {
          await link(flow.userId, detail.session_id, profile, caller)
          return { returnTo, outcome: { kind: 'linked', provider: name } }
        }
        return { returnTo, outcome: { kind: 'sign-in', step: await signInAs(client, profile, caller, true) } }
      } catch (error) {
        throw new FlowFailure(returnTo, error)
      }
    },

    /** A sign-in with an ID token a native app got from the provider's SDK, answered as a password login is. */
    async idToken (name: string, idToken: string, nonce: string | undefined, caller: Caller): Promise<SignInStep> {
      const client = clientOf(name)
      return await signInAs(client, await client.verifyIdToken(idToken, nonce), caller, true)
    },

    /** The user's linked identities. */
    async list (userId: number) {
      return await identitiesOf(db, userId)
    },

    /** Unlinks the user's identity `id`; refused when the account would be left with no way in. */
    async unlink (userId: number, id: string, caller: Caller): Promise<void> {
      const provider = await db.transaction().execute(async (trx) => {
        const methods = await methodsOfUser(trx, userId, { lock: true })
        const removed = await deleteIdentity(trx, userId, id)
        if (removed === undefined) throw new IdentityNotFoundError(id)
        if (!hasWayIn({ ...methods, identities: methods.identities - 1 }, config.features)) throw new LastWayInError()
        await notify(userId, `the sign-in with ${removed} was removed from it`, trx)
        return removed
      })
      audit.record({ event: 'identity_unlinked', userId, detail: { provider, identity: id } }, caller)
      outbox.kick()
    }
  }
}

export type Upstream = ReturnType<typeof createUpstream>
