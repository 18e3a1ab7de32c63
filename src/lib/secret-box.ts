import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { subkey, type Purpose } from './subkeys.ts'

const TAG_LENGTH = 16

/**
 * Authenticated encryption (AES-256-GCM) under a key derived from SECRET_KEY with HKDF
 * (RFC 5869); `purpose` separates the keys of different uses, and `context` (associated data,
 * such as the row's key) binds a sealed text to its place. Sealed text: v1.iv.ciphertext.tag.
 */
export class SecretBox {
  readonly #key: Buffer

  constructor (secret: string, purpose: Purpose) {
    this.#key = subkey(secret, purpose)
  }

  seal (plaintext: string, context: string): string {
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.#key, iv, { authTagLength: TAG_LENGTH })
    cipher.setAAD(Buffer.from(context, 'utf8'))
    const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
    return ['v1', iv, body, cipher.getAuthTag()].map((p) => typeof p === 'string' ? p : p.toString('base64url')).join('.')
  }

  /** Throws when the text was sealed under another secret or context, or altered. */
  open (sealed: string, context: string): string {
    const [version, iv, body, tag] = sealed.split('.')
    if (version !== 'v1' || iv === undefined || body === undefined || tag === undefined) {
      throw new Error('unknown sealed format')
    }
    try {
      // The tag length is pinned: a truncated tag would be easier to forge.
      const decipher = createDecipheriv('aes-256-gcm', this.#key, Buffer.from(iv, 'base64url'), { authTagLength: TAG_LENGTH })
      decipher.setAAD(Buffer.from(context, 'utf8'))
      decipher.setAuthTag(Buffer.from(tag, 'base64url'))
      return Buffer.concat([decipher.update(Buffer.from(body, 'base64url')), decipher.final()]).toString('utf8')
    } catch (error) {
      throw new Error('sealed data cannot be opened: SECRET_KEY is not the one it was sealed with, or the data was altered', { cause: error })
    }
  }
}
