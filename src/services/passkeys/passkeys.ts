import { randomBytes } from 'node:crypto'
import type {
  AuthenticationResponseJSON, PublicKeyCredentialCreationOptionsJSON, PublicKeyCredentialRequestOptionsJSON, RegistrationResponseJSON
} from '@simplewebauthn/server'
import type { Transaction } from 'kysely'
import type { Config } from '../../config.ts'
import type { Db } from '../../db/index.ts'
import type { Database } from '../../db/types.ts'
import {
  InvalidCredentialsError, LastWayInError, MfaTokenInvalidError, PasskeyChallengeInvalidError, PasskeyExistsError, PasskeyInvalidError, PasskeyNotFoundError, PasskeyUnknownError
} from '../../errors.ts'
import { epochSeconds, type Clock } from '../../lib/clock.ts'
import type { TokenPair } from '../../schemas.ts'
import { activeWithMethods, hasAal2Way, hasWayIn, methodsOfUser, recipientOf, recordLoginOfSigner, userHandleOf } from '../accounts/users.ts'
import type { AuditTrail, Caller } from '../audit.ts'
import { requireRecent, type TokenClaims } from '../auth/claims.ts'
import type { MailTemplates } from '../mail/templates.ts'
import type { Outbox } from '../mail/outbox.ts'
import type { Mfa } from '../mfa/mfa.ts'
import type { OneTimeCodes } from '../one-time-codes.ts'
import type { Executor } from '../sessions/sessions.ts'
import type { SignIn, SignInStep } from '../sign-in.ts'
import { credentialIdsOf, deletePasskey, insertPasskey, passkeyOfCredential, passkeysOf, renamePasskey, takePasskey, usePasskey } from './credentials.ts'

export interface PasskeysDeps {
  db: Db
  clock: Clock
  config: Pick<Config, 'WEBAUTHN_RP_ID' | 'WEBAUTHN_RP_NAME' | 'passkeyOrigins' | 'features'>
  oneTimeCodes: OneTimeCodes
  signIn: SignIn
  mfa: Mfa
  outbox: Outbox
  templates: MailTemplates
  audit: AuditTrail
}

/** Options for the browser (navigator.credentials), and the id of their challenge, to send back with the answer. */
export interface Ceremony<Options> { challengeId: string, options: Options }

// A challenge lives 5 minutes, and the browser is given as long to answer.
const CHALLENGE_TTL_S = 300
const DEFAULT_NAME = 'Passkey'
// The keys a passkey may have: Ed25519, P-256, RSA (COSE -8, -7, -257), every authenticator's.
// Named, not the library's default, which probes Node for ML-DSA and warns on stderr that it is experimental.
const ALGORITHMS = [-8, -7, -257]

/**
 * Why @simplewebauthn/server refused an answer, in words a front end's developer can act on;
 * its own messages name expected values and stay in the server.
 */
function refusal (error: unknown): InstanceType<typeof PasskeyInvalidError> {
  const message = error instanceof Error ? error.message : ''
  const reason = /origin/i.test(message)
    ? 'it was made on a page whose origin WEBAUTHN_ORIGINS does not list'
    : /RP ID/i.test(message)
      ? 'it was made for another relying party id than WEBAUTHN_RP_ID'
      : /verification/i.test(message)
        ? 'the authenticator did not verify the user (a PIN or a biometric), which a passkey here needs'
        : /present/i.test(message)
          ? 'the authenticator did not test that the user was present'
          : /challenge/i.test(message) ? 'it answers another challenge' : 'its answer is malformed or its signature is wrong'
  return new PasskeyInvalidError(reason)
}

/**
 * Passkeys (WebAuthn, @simplewebauthn/server): registered by a signed-in user, used to sign in
 * without a password or a username (discoverable credentials), or as the second step of another
 * sign-in. Every passkey verifies its user (a PIN, a biometric), so a sign-in by one is aal2 by
 * itself (NIST SP 800-63B-4), amr `hwk` (a device-bound key) or `swk` (a synced one), `user`
 * and `mfa` (RFC 8176). Challenges are single-use secrets of the one-time codes (5 minutes,
 * spent once whatever replica answers); the RP id and origins are the configuration's only. A
 * signature counter that does not move ahead is a copied authenticator's: refused, audited.
 */
export function createPasskeys ({ db, clock, config, oneTimeCodes, signIn, mfa, outbox, templates, audit }: PasskeysDeps) {
  // The library (with its ASN.1 and X.509 code: 28 MB and 0.2 s to load, measured alone) loads
  // only where passkeys are on, as the service starts, so no sign-in waits for it.
  let library: Promise<typeof import('@simplewebauthn/server')> | undefined
  const webauthn = (): Promise<typeof import('@simplewebauthn/server')> => (library ??= import('@simplewebauthn/server'))
  if (config.features.passkeys) webauthn().catch(() => {})
  const rpID = config.WEBAUTHN_RP_ID ?? ''
  const expected = { expectedOrigin: [...config.passkeyOrigins], expectedRPID: rpID, requireUserVerification: true }
  const nowS = (): number => epochSeconds(clock.now())

  outbox.define('passkey_changed', async (payload, trx) => {
    const user = await recipientOf(trx, Number(payload.userId))
    if (user === undefined) return undefined
    return { mail: templates.render('passkey-changed', user.email, { username: user.username, change: String(payload.change), at: String(payload.at) }) }
  })
  // The notice of a change, queued with it; sent once it committed (outbox.kick).
  const notify = (userId: number, change: string, executor: Executor): Promise<void> =>
    outbox.enqueue('passkey_changed', { userId, change, at: clock.now().toISOString() }, executor)

  // The challenge of `challengeId`, spent once: PasskeyChallengeInvalidError when it is unknown, spent or expired.
  async function spendChallenge (purpose: 'passkey_registration' | 'passkey_authentication', challengeId: string) {
    const flow = await oneTimeCodes.spendFlow(purpose, challengeId)
    if (flow === undefined) throw new PasskeyChallengeInvalidError()
    return { userId: flow.userId, challenge: String(flow.detail.challenge), sid: flow.detail.sid }
  }

  /**
   * The passkey an assertion is of, its signature checked against the challenge, the origins and
   * the RP id, with user verification: the passkey's id and user, and its amr values. A
   * `discoverable` one (a sign-in without a username) names its user by the handle it keeps.
   * Every refusal is a login failure in the audit trail. The passkey is read within `executor`.
   */
  async function verifyAssertion (response: AuthenticationResponseJSON, challenge: string, caller: Caller, { discoverable, executor = db }: { discoverable: boolean, executor?: Executor }) {
    const fail = (error: InstanceType<typeof PasskeyInvalidError | typeof PasskeyUnknownError>, userId: number | null = null): never => {
      audit.record({ event: 'login', outcome: 'failure', userId, detail: { method: 'passkey', reason: error.message } }, caller)
      throw error
    }
    if (discoverable && response.response.userHandle === undefined) return fail(new PasskeyInvalidError('it names no user handle, as a discoverable passkey does'))
    const passkey = await passkeyOfCredential(executor, response.id)
    if (passkey === undefined) return fail(new PasskeyUnknownError())
    // The handle the authenticator keeps with a discoverable passkey is its user's (one per user, never changed).
    const handle = response.response.userHandle
    if (handle !== undefined && handle !== passkey.webauthn_user_handle) return fail(new PasskeyInvalidError('its user handle is not its account\'s'), passkey.user_id)
    const { verifyAuthenticationResponse } = await webauthn()
    let verified
    try {
      verified = await verifyAuthenticationResponse({
        response,
        expectedChallenge: challenge,
        ...expected,
        // The counter is judged by the guarded update that takes it (usePasskey), whatever replica answers.
        credential: { id: response.id, publicKey: Buffer.from(passkey.public_key, 'base64url'), counter: 0, transports: passkey.transports as never }
      })
    } catch (error) {
      return fail(refusal(error), passkey.user_id)
    }
    if (!verified.verified) return fail(refusal(undefined), passkey.user_id)
    const info = verified.authenticationInfo
    const amr = [info.credentialDeviceType === 'singleDevice' ? 'hwk' : 'swk', 'user', 'mfa']
    const use = { counter: info.newCounter, backedUp: info.credentialBackedUp }
    // A signature counter that did not move ahead: refused, and in the audit trail.
    const regressed = (): never => {
      audit.record({ event: 'passkey_counter_regressed', outcome: 'failure', userId: passkey.user_id, detail: { passkey: passkey.id, stored: Number(passkey.counter), shown: info.newCounter } }, caller)
      return fail(new PasskeyInvalidError('its signature counter did not move ahead, as a copied authenticator\'s would not'), passkey.user_id)
    }
    return {
      id: passkey.id,
      userId: passkey.user_id,
      amr,
      /** Takes the signature counter within `executor`: one that does not move ahead is refused. */
      async take (executor: Executor): Promise<void> {
        if (!await usePasskey(executor, passkey.id, use, clock.db())) regressed()
      },
      /**
       * Takes the counter and records the sign-in of its user, if active, in one statement: the
       * user with their sign-in methods. Refused when the counter did not move ahead; undefined
       * when the user is not active (the counter then stays).
       */
      async takeForSignIn () {
        const user = await recordLoginOfSigner(db.with('signer', (q) => takePasskey(q, passkey.id, use, clock.db(), { ofActiveUser: true })), clock.db())
        if (user !== undefined) return user
        // Nothing taken: the user is not active, or the counter did not move ahead.
        if (await activeWithMethods(db, passkey.user_id) !== undefined) regressed()
        return undefined
      }
    }
  }

  return {
    /**
     * Registration options for the signed-in user (a sign-in within 10 minutes, aal2 for a user
     * who can sign in at aal2 already): a discoverable passkey that verifies its user,
     * attestation none, the user's passkeys excluded, their one user handle.
     */
    async registrationOptions (user: { id: number, username: string }, claims: TokenClaims): Promise<Ceremony<PublicKeyCredentialCreationOptionsJSON>> {
      requireRecent(claims, nowS(), { aal2: hasAal2Way(await methodsOfUser(db, user.id)) })
      const handle = await userHandleOf(db, user.id, randomBytes(32).toString('base64url'))
      if (handle === undefined) throw new InvalidCredentialsError()
      const options = await (await webauthn()).generateRegistrationOptions({
        rpName: config.WEBAUTHN_RP_NAME,
        rpID,
        userName: user.username,
        userDisplayName: user.username,
        supportedAlgorithmIDs: ALGORITHMS,
        userID: Buffer.from(handle, 'base64url'),
        attestationType: 'none',
        excludeCredentials: await credentialIdsOf(db, user.id),
        authenticatorSelection: { residentKey: 'required', requireResidentKey: true, userVerification: 'required' },
        timeout: CHALLENGE_TTL_S * 1000
      })
      const challengeId = await oneTimeCodes.issueFlow('passkey_registration', { userId: user.id, ttlS: CHALLENGE_TTL_S, detail: { challenge: options.challenge, sid: claims.sid } })
      return { challengeId, options }
    },

    /** Verifies the browser's answer to registration options of this session, and keeps the passkey: its id. */
    async register (user: { id: number }, claims: TokenClaims, answer: { challengeId: string, response: RegistrationResponseJSON, name?: string }, caller: Caller): Promise<{ id: string }> {
      const flow = await spendChallenge('passkey_registration', answer.challengeId)
      if (flow.userId !== user.id || flow.sid !== claims.sid) throw new PasskeyChallengeInvalidError()
      const { verifyRegistrationResponse } = await webauthn()
      let verified
      try {
        verified = await verifyRegistrationResponse({ response: answer.response, expectedChallenge: flow.challenge, ...expected, supportedAlgorithmIDs: ALGORITHMS })
      } catch (error) {
        verified = { verified: false as const, error }
      }
      if (!verified.verified) {
        const refused = refusal('error' in verified ? verified.error : undefined)
        audit.record({ event: 'passkey_added', outcome: 'failure', userId: user.id, detail: { reason: refused.message } }, caller)
        throw refused
      }
      const info = verified.registrationInfo
      const name = answer.name ?? DEFAULT_NAME
      const id = await db.transaction().execute(async (trx) => {
        const inserted = await insertPasskey(trx, user.id, {
          credentialId: info.credential.id,
          publicKey: Buffer.from(info.credential.publicKey).toString('base64url'),
          counter: info.credential.counter,
          transports: info.credential.transports ?? [],
          deviceType: info.credentialDeviceType,
          backedUp: info.credentialBackedUp,
          aaguid: info.aaguid,
          name
        }, clock.db())
        if (inserted === undefined) throw new PasskeyExistsError()
        await notify(user.id, `a passkey (${name}) was added`, trx)
        return inserted
      })
      outbox.kick()
      audit.record({ event: 'passkey_added', userId: user.id, detail: { passkey: id, device_type: info.credentialDeviceType } }, caller)
      return { id }
    },

    /**
     * Authentication options: for a sign-in without a username (any discoverable passkey), or,
     * with the mfa_token of a first step, for that user's passkeys.
     */
    async authenticationOptions ({ mfaToken }: { mfaToken?: string }): Promise<Ceremony<PublicKeyCredentialRequestOptionsJSON>> {
      let userId: number | null = null
      if (mfaToken !== undefined) {
        userId = (await oneTimeCodes.inspect('mfa_challenge', mfaToken))?.userId ?? null
        if (userId === null) throw new MfaTokenInvalidError()
      }
      const options = await (await webauthn()).generateAuthenticationOptions({
        rpID,
        userVerification: 'required',
        allowCredentials: userId === null ? [] : await credentialIdsOf(db, userId) as never,
        timeout: CHALLENGE_TTL_S * 1000
      })
      const challengeId = await oneTimeCodes.issueFlow('passkey_authentication', { userId, ttlS: CHALLENGE_TTL_S, detail: { challenge: options.challenge } })
      return { challengeId, options }
    },

    /** A sign-in by a passkey, without a password or a username: as a password sign-in answers, aal2. */
    async signIn (answer: { challengeId: string, response: AuthenticationResponseJSON }, caller: Caller): Promise<SignInStep> {
      const flow = await spendChallenge('passkey_authentication', answer.challengeId)
      const passkey = await verifyAssertion(answer.response, flow.challenge, caller, { discoverable: true })
      return await signIn.passkey(passkey.userId, await passkey.takeForSignIn(), { amr: passkey.amr, passkey: passkey.id }, caller)
    },

    /**
     * The second step of a sign-in (its mfa_token) by one of the user's passkeys: judged once the
     * token's try is counted, so that a refused answer uses one of its five.
     */
    async completeSignIn (answer: { challengeId: string, response: AuthenticationResponseJSON, mfaToken: string }, caller: Caller): Promise<{ pair: TokenPair, cookies: boolean }> {
      const flow = await spendChallenge('passkey_authentication', answer.challengeId)
      return await mfa.completeByPasskey(answer.mfaToken, async (userId: number, trx: Transaction<Database>) => {
        const passkey = await verifyAssertion(answer.response, flow.challenge, caller, { discoverable: false, executor: trx })
        if (passkey.userId !== userId || (flow.userId !== null && flow.userId !== userId)) {
          // A failed sign-in of the account the mfa_token is of, as every other refusal of a passkey is.
          const error = new PasskeyInvalidError('it is not a passkey of the account signing in')
          audit.record({ event: 'login', outcome: 'failure', userId, detail: { method: 'passkey', reason: error.message } }, caller)
          throw error
        }
        await passkey.take(trx)
        return passkey.amr
      }, caller)
    },

    /** The user's passkeys, oldest first. */
    list: (userId: number) => passkeysOf(db, userId),

    async rename (userId: number, id: string, name: string, caller: Caller): Promise<void> {
      if (!await renamePasskey(db, userId, id, name)) throw new PasskeyNotFoundError(id)
      audit.record({ event: 'passkey_renamed', userId, detail: { passkey: id } }, caller)
    },

    /**
     * Removes a passkey of the signed-in user: from an aal2 session signed in within the last 10
     * minutes, as for a second factor; refused when it is the last way into the account.
     */
    async remove (userId: number, claims: TokenClaims, id: string, caller: Caller): Promise<void> {
      requireRecent(claims, nowS(), { aal2: true })
      await db.transaction().execute(async (trx) => {
        const methods = await methodsOfUser(trx, userId, { lock: true })
        const name = await deletePasskey(trx, userId, id)
        if (name === undefined) throw new PasskeyNotFoundError(id)
        if (!hasWayIn({ ...methods, passkeys: methods.passkeys - 1 }, config.features)) throw new LastWayInError()
        await notify(userId, `the passkey ${name} was removed`, trx)
      })
      outbox.kick()
      audit.record({ event: 'passkey_removed', userId, detail: { passkey: id } }, caller)
    },

    /** An operator's removal of a user's passkey (a lost device): the user is mailed; whether there was one. */
    async removeByOperator (userId: number, id: string): Promise<boolean> {
      const name = await db.transaction().execute(async (trx) => {
        const removed = await deletePasskey(trx, userId, id)
        if (removed !== undefined) await notify(userId, `an operator removed the passkey ${removed}`, trx)
        return removed
      })
      outbox.kick()
      return name !== undefined
    }
  }
}

export type Passkeys = ReturnType<typeof createPasskeys>
