import type { Migration } from 'kysely/migration'
import * as initial from './0001-initial.ts'
import * as nextSigningKey from './0002-next-signing-key.ts'
import * as auditEvents from './0003-audit-events.ts'
import * as sessionNotifications from './0004-session-notifications.ts'
import * as refreshFunction from './0005-refresh-function.ts'
import * as pinnedSearchPath from './0006-pinned-search-path.ts'
import * as oneTimeCodes from './0007-one-time-codes.ts'
import * as oauthClients from './0008-oauth-clients.ts'
import * as admin from './0009-admin.ts'
import * as mailOutbox from './0010-mail-outbox.ts'
import * as emailVerification from './0011-email-verification.ts'
import * as secondFactors from './0012-second-factors.ts'
import * as clientAuthMethod from './0013-client-auth-method.ts'
import * as mailCodeTries from './0014-mail-code-tries.ts'
import * as upstreamIdentities from './0015-upstream-identities.ts'
import * as passkeys from './0016-passkeys.ts'
import * as tokenExchange from './0017-token-exchange.ts'
import * as refreshBatch from './0018-refresh-batch.ts'

/** Every migration, in order: listed here, never discovered from the file system. */
export const migrations: Record<string, Migration> = {
  '0001-initial': initial,
  '0002-next-signing-key': nextSigningKey,
  '0003-audit-events': auditEvents,
  '0004-session-notifications': sessionNotifications,
  '0005-refresh-function': refreshFunction,
  '0006-pinned-search-path': pinnedSearchPath,
  '0007-one-time-codes': oneTimeCodes,
  '0008-oauth-clients': oauthClients,
  '0009-admin': admin,
  '0010-mail-outbox': mailOutbox,
  '0011-email-verification': emailVerification,
  '0012-second-factors': secondFactors,
  '0013-client-auth-method': clientAuthMethod,
  '0014-mail-code-tries': mailCodeTries,
  '0015-upstream-identities': upstreamIdentities,
  '0016-passkeys': passkeys,
  '0017-token-exchange': tokenExchange,
  '0018-refresh-batch': refreshBatch
}
