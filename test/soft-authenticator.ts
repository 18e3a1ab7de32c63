import { createHash, createSign, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto'
import { isoCBOR } from '@simplewebauthn/server/helpers'

/**
 * A WebAuthn authenticator in the test process, for the API tests of passkeys on both engines:
 * an ES256 key per credential, attestation `none`, its answers in the JSON a browser gives
 * (@simplewebauthn/browser's). Not a stand-in for a browser: the Chromium tests
 * (test/passkeys-browser.test.ts) use Chromium's own virtual authenticator. Its flags and counter
 * are the test's to set, so that an answer without user verification, for another origin, or with
 * a counter gone back can be made on purpose.
 */
export interface SoftCredential {
  id: string
  userHandle: string
  privateKey: KeyObject
  /** The next signature counter it shows; 0 keeps it at nought (as a synced passkey does). */
  counter: number
}

export interface Options {
  origin: string
  rpId: string
  /** User verified (UV) and present (UP): both by default. */
  userVerified?: boolean
  userPresent?: boolean
  /** A synced passkey (a password manager's): backup eligible and backed up (BE, BS); device-bound by default. */
  backedUp?: boolean
  /** The type clientDataJSON names (webauthn.create, webauthn.get): the right one by default. */
  type?: string
}

const FLAG_UP = 0x01
const FLAG_UV = 0x04
const FLAG_BE = 0x08
const FLAG_BS = 0x10
const FLAG_AT = 0x40

const sha256 = (data: Uint8Array | string): Buffer => createHash('sha256').update(data).digest()
const b64url = (data: Uint8Array): string => Buffer.from(data).toString('base64url')

function clientData (type: string, challenge: string, origin: string): Buffer {
  return Buffer.from(JSON.stringify({ type, challenge, origin, crossOrigin: false }))
}

function flagsOf ({ userVerified = true, userPresent = true, backedUp = false }: Options, extra = 0): number {
  return (userPresent ? FLAG_UP : 0) | (userVerified ? FLAG_UV : 0) | (backedUp ? FLAG_BE | FLAG_BS : 0) | extra
}

function counterBytes (counter: number): Buffer {
  const bytes = Buffer.alloc(4)
  bytes.writeUInt32BE(counter)
  return bytes
}

/** The COSE key (RFC 9053) of an EC2 P-256 public key. */
function coseKey (privateKey: KeyObject): Uint8Array {
  const jwk = privateKey.export({ format: 'jwk' })
  return isoCBOR.encode(new Map<number, number | Uint8Array>([
    [1, 2], [3, -7], [-1, 1],
    [-2, Buffer.from(jwk.x!, 'base64url')],
    [-3, Buffer.from(jwk.y!, 'base64url')]
  ]))
}

/** A new credential for the user handle, and the browser's answer to registration `options`. */
export function register (options: { challenge: string, user: { id: string } }, settings: Options): { credential: SoftCredential, response: Record<string, unknown> } {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const credentialId = randomBytes(32)
  const credential: SoftCredential = { id: b64url(credentialId), userHandle: options.user.id, privateKey, counter: 1 }
  const idLength = Buffer.alloc(2)
  idLength.writeUInt16BE(credentialId.length)
  const authData = Buffer.concat([
    sha256(settings.rpId), Buffer.from([flagsOf(settings, FLAG_AT)]), counterBytes(0),
    Buffer.alloc(16), idLength, credentialId, coseKey(privateKey)
  ])
  const attestationObject = isoCBOR.encode(new Map<string, unknown>([['fmt', 'none'], ['attStmt', new Map()], ['authData', authData]]) as never)
  return {
    credential,
    response: {
      id: credential.id,
      rawId: credential.id,
      type: 'public-key',
      response: {
        clientDataJSON: b64url(clientData(settings.type ?? 'webauthn.create', options.challenge, settings.origin)),
        attestationObject: b64url(attestationObject),
        transports: ['internal']
      },
      clientExtensionResults: {},
      authenticatorAttachment: 'platform'
    }
  }
}

/** The browser's answer to authentication `options` by `credential`; its counter moves on, unless it is nought. */
export function assert (credential: SoftCredential, options: { challenge: string }, settings: Options & { userHandle?: string | null }): Record<string, unknown> {
  const authData = Buffer.concat([sha256(settings.rpId), Buffer.from([flagsOf(settings)]), counterBytes(credential.counter)])
  if (credential.counter > 0) credential.counter += 1
  const data = clientData(settings.type ?? 'webauthn.get', options.challenge, settings.origin)
  const signature = createSign('sha256').update(Buffer.concat([authData, sha256(data)])).sign(credential.privateKey)
  const userHandle = settings.userHandle === undefined ? credential.userHandle : settings.userHandle
  return {
    id: credential.id,
    rawId: credential.id,
    type: 'public-key',
    response: {
      clientDataJSON: b64url(data),
      authenticatorData: b64url(authData),
      signature: b64url(signature),
      ...(userHandle === null ? {} : { userHandle })
    },
    clientExtensionResults: {},
    authenticatorAttachment: 'platform'
  }
}
