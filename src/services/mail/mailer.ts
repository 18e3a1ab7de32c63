import type { Config } from '../../config.ts'
import type { Logger } from '../../lib/logger.ts'

/** A mail, in both forms a client may show. */
export interface Mail {
  to: string
  subject: string
  text: string
  html: string
}

/** The mailer port: where mail goes. A test puts its own in place through the composition root. */
export interface Mailer {
  /** Whether mail reaches anyone: false without SMTP_URL. */
  readonly delivers: boolean
  /** Hands the mail to the SMTP server; rejects when it cannot. */
  send: (mail: Mail) => Promise<void>
  close: () => Promise<void>
}

export interface MailerDeps {
  config: Pick<Config, 'SMTP_URL' | 'MAIL_FROM' | 'NODE_ENV'>
  log: Logger
}

/**
 * Mail through nodemailer (https://nodemailer.com) to the SMTP server of SMTP_URL, from
 * MAIL_FROM. Without SMTP_URL nothing is sent, and each mail is one line in the log. Outside
 * production that line holds the whole text, link and code included, so that a developer can
 * finish a reset, a verification or a code sign-in without an SMTP catcher. In production it
 * holds the address and subject only: a mail's body holds secrets, which production never logs
 * (and a feature that cannot work without mail refuses to start there, src/config.ts).
 */
export async function createMailer ({ config, log }: MailerDeps): Promise<Mailer> {
  if (config.SMTP_URL === undefined) {
    const wholeMail = config.NODE_ENV !== 'production'
    // Said once, with the first mail, not at every start: the CLI's commands send none.
    let warned = false
    return {
      delivers: false,
      async send (mail) {
        if (!wholeMail) return log.info({ to: mail.to, subject: mail.subject }, 'mail not sent: SMTP_URL is not set')
        if (!warned) log.warn({}, 'SMTP_URL is not set: mail is written to the log, links and codes included (NODE_ENV is not production)')
        warned = true
        log.info({ to: mail.to, subject: mail.subject, text: mail.text }, 'mail not sent: SMTP_URL is not set; its text is here')
      },
      async close () {}
    }
  }
  // Loaded only when mail is sent.
  const { default: nodemailer } = await import('nodemailer')
  const transport = nodemailer.createTransport(config.SMTP_URL, { from: config.MAIL_FROM })
  return {
    delivers: true,
    async send (mail) {
      await transport.sendMail(mail)
    },
    async close () {
      transport.close()
    }
  }
}
