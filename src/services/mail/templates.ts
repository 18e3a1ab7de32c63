import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Mail } from './mailer.ts'

/**
 * The mails authgate sends, each a `<name>.txt` (a `Subject:` line, a blank line, the text) and
 * a `<name>.html`, with the values each may name.
 */
export const MAIL_TEMPLATES = {
  'password-reset': ['username', 'link', 'code', 'minutes'],
  'password-changed': ['username', 'at'],
  'email-verification': ['username', 'link', 'code', 'hours'],
  'email-sign-in': ['username', 'code', 'minutes'],
  'second-factor-changed': ['username', 'change', 'at'],
  'address-proven': ['username', 'removed', 'at'],
  'sign-in-linked': ['username', 'change', 'at'],
  'passkey-changed': ['username', 'change', 'at']
} as const satisfies Record<string, readonly string[]>
export type MailTemplate = keyof typeof MAIL_TEMPLATES

const BUILT_IN = fileURLToPath(new URL('../../templates/mail/', import.meta.url))
const PLACEHOLDER = /\{\{([a-z_]+)\}\}/g

const escapeHtml = (value: string): string => value.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

interface Parsed { subject: string, text: string, html: string }

function parse (name: string, dir: string | undefined): Parsed {
  // A file of the operator's folder replaces the built-in one of its name, each file on its own.
  const read = (file: string): string => readFileSync(dir !== undefined && existsSync(join(dir, file)) ? join(dir, file) : join(BUILT_IN, file), 'utf8')
  const source = read(`${name}.txt`)
  const match = /^Subject: (.+)\r?\n\r?\n([\s\S]*)$/.exec(source)
  if (match === null) throw new Error(`the mail template ${name}.txt must start with a "Subject: " line and a blank line`)
  return { subject: match[1]!.trim(), text: match[2]!, html: read(`${name}.html`) }
}

/**
 * The mail templates, read once at start: the built-in ones (src/templates/mail/), each
 * replaceable by a file of the same name in MAIL_TEMPLATES_DIR. `{{name}}` is replaced by the
 * value given for it, escaped in the HTML; a template naming a value the mail does not have
 * fails at start, not when a user waits for the mail.
 */
export function loadMailTemplates (dir: string | undefined) {
  const templates = new Map<MailTemplate, Parsed>()
  for (const [name, variables] of Object.entries(MAIL_TEMPLATES) as Array<[MailTemplate, readonly string[]]>) {
    const parsed = parse(name, dir)
    for (const part of [parsed.subject, parsed.text, parsed.html]) {
      for (const [, variable] of part.matchAll(PLACEHOLDER)) {
        if (!variables.includes(variable!)) throw new Error(`the mail template ${name} names {{${variable}}}, which is not one of ${variables.join(', ')}`)
      }
    }
    templates.set(name, parsed)
  }
  return {
    /** The mail of template `name` to `to`, its placeholders filled. */
    render (name: MailTemplate, to: string, values: Record<string, string>): Mail {
      const { subject, text, html } = templates.get(name)!
      const fill = (part: string, escape: (v: string) => string): string => part.replace(PLACEHOLDER, (_, variable: string) => escape(values[variable] ?? ''))
      return { to, subject: fill(subject, (v) => v), text: fill(text, (v) => v), html: fill(html, escapeHtml) }
    }
  }
}

export type MailTemplates = ReturnType<typeof loadMailTemplates>
