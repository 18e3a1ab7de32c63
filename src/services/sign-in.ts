import { InvalidCredentialsError } from '../errors.ts'
import type { TokenPair, User } from '../schemas.ts'
import type { Accounts, PasswordProof } from './accounts.ts'
import type { AuditTrail, Caller } from './audit.ts'
import type { Sessions } from './sessions.ts'

/**
 * Where a sign-in stands after a step: a session with its first pair. The steps that come with
 * second factors and email verification answer here what the client must do next.
 */
export type SignInStep = { kind: 'session', user: User, sessionId: string, pair: TokenPair }

export interface SignInDeps {
  accounts: Accounts
  sessions: Sessions
  audit: AuditTrail
}

/**
 * Signing in, as a sequence of steps: a first factor proves who the user is, then whatever the
 * account still needs comes next, and only then does a session start. Every outcome is in the
 * audit trail, as `login`.
 */
export function createSignIn ({ accounts, sessions, audit }: SignInDeps) {
  // A first factor passed: what comes next (for now, always the session).
  async function next ({ user, credential }: PasswordProof, caller: Caller): Promise<SignInStep> {
    let started
    try {
      started = await sessions.start(credential, caller.client)
    } catch (error) {
      // The credential changed while it was checked (a password change, the account disabled).
      if (error instanceof InvalidCredentialsError) audit.record({ event: 'login', outcome: 'failure', userId: user.id }, caller)
      throw error
    }
    audit.record({ event: 'login', userId: user.id, sessionId: started.sessionId }, caller)
    return { kind: 'session', user, ...started }
  }

  return {
    /** A sign-in with a username (or an email: it holds an @) and a password. */
    async password (identifier: string, password: string, caller: Caller): Promise<SignInStep> {
      let proof
      try {
        proof = await accounts.authenticate(identifier, password)
      } catch (error) {
        if (error instanceof InvalidCredentialsError) audit.record({ event: 'login', outcome: 'failure', identifier }, caller)
        throw error
      }
      return await next(proof, caller)
    }
  }
}

export type SignIn = ReturnType<typeof createSignIn>
