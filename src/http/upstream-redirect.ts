/**
 * The page an upstream sign-in's callback sends the browser back to, with what it has to say in
 * the fragment: the browser keeps a fragment from servers, logs and Referer headers, so no code,
 * token or error ever travels in a query string.
 */
export function withFragment (returnTo: string, values: Record<string, string>): string {
  return `${returnTo}#${new URLSearchParams(values).toString()}`
}
