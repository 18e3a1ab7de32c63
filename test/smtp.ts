import { simpleParser, type ParsedMail } from 'mailparser'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { SMTPServer } from 'smtp-server'
import type { Test } from 'tap'

export interface Inbox {
  /** smtp://127.0.0.1:<port>, for SMTP_URL. */
  url: string
  /** Every mail received, parsed, in order. */
  mails: ParsedMail[]
  /** The next mail to arrive (or the first not yet taken), within `timeoutMs`. */
  next: (timeoutMs?: number) => Promise<ParsedMail>
  /** The first mail to `to` whose text matches `text`, once it has arrived (a hang after 30 s), taken or not. */
  find: (to: string, text: RegExp) => Promise<ParsedMail>
  /** The last mail to `to` whose text matches `text` of those arrived so far, taken or not. */
  latest: (to: string, text: RegExp) => ParsedMail | undefined
  /** Stops taking connections: SMTP is down. */
  stop: () => Promise<void>
  /** Takes them again on the same port. */
  start: () => Promise<void>
}

/** The token of the link in a mail, in the URL's fragment (base64url, RFC 4648 §5). */
export const tokenOf = (mail: ParsedMail): string => /#token=([A-Za-z0-9_-]{43})/.exec(mail.text ?? '')![1]!
/** The six-digit code in a mail: the one after a colon, never digits of a username before it. */
export const codeOf = (mail: ParsedMail): string => /: ([0-9]{6})\b/.exec(mail.text ?? '')![1]!

const isTo = (mail: ParsedMail, to: string, text: RegExp): boolean => mail.to !== undefined && !Array.isArray(mail.to) && mail.to.text === to && text.test(mail.text ?? '')

/**
 * A real SMTP server (nodemailer's smtp-server) on 127.0.0.1, the mail it receives parsed with
 * mailparser; closed at teardown. No TLS and no login: a development mail catcher's setup.
 */
export async function startInbox (t: Test): Promise<Inbox> {
  const mails: ParsedMail[] = []
  let taken = 0
  const waiting: Array<() => void> = []
  let port = 0
  let server: SMTPServer | undefined
  const start = async (): Promise<void> => {
    server = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS', 'AUTH'],
      logger: false,
      onData (stream, _session, callback) {
        simpleParser(stream).then((mail) => {
          mails.push(mail)
          for (const wake of waiting.splice(0)) wake()
          callback()
        }, callback)
      }
    })
    server.listen(port, '127.0.0.1')
    await once(server.server, 'listening')
    port = (server.server.address() as AddressInfo).port
  }
  const stop = async (): Promise<void> => {
    const current = server
    server = undefined
    if (current !== undefined) await new Promise<void>((resolve) => current.close(() => resolve()))
  }
  await start()
  t.teardown(stop)
  return {
    url: `smtp://127.0.0.1:${port}`,
    mails,
    async next (timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs
      while (taken >= mails.length) {
        if (Date.now() > deadline) throw new Error(`no mail within ${timeoutMs} ms`)
        await new Promise<void>((resolve) => {
          waiting.push(resolve)
          setTimeout(resolve, 100).unref()
        })
      }
      return mails[taken++]!
    },
    async find (to, text) {
      const deadline = Date.now() + 30_000
      for (;;) {
        const found = mails.find((mail) => isTo(mail, to, text))
        if (found !== undefined) return found
        if (Date.now() > deadline) throw new Error(`no mail to ${to} matching ${text}`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    },
    latest: (to, text) => mails.findLast((mail) => isTo(mail, to, text)),
    stop,
    start
  }
}
