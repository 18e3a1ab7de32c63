import { readFile } from 'node:fs/promises'
import t from 'tap'
import { ConfigSchema } from '../src/config.ts'
import { PROVIDER_SETTINGS } from '../src/lib/upstream-providers.ts'

// docs/configuration.md is what operators read: it names every variable of the schema, no
// other, each with the schema's default.
t.test('the configuration table holds every variable of the schema, and its default', async (t) => {
  const doc = await readFile('docs/configuration.md', 'utf8')
  const rows = new Map([...doc.matchAll(/^\| `([A-Z0-9_]+)` \| ([^|]*) \|/gm)].map((m) => [m[1]!, m[2]!]))
  const properties = ConfigSchema.properties as Record<string, { default?: unknown }>
  t.same([...rows.keys()].sort(), Object.keys(properties).sort(), 'the same variables')
  for (const [name, schema] of Object.entries(properties)) {
    if (schema.default === undefined || schema.default === '') continue
    t.ok(rows.get(name)?.includes(`\`${String(schema.default)}\``), `${name}: its default \`${String(schema.default)}\``)
  }
})

// Each identity provider's settings are read by name, not by the schema (src/lib/upstream-providers.ts):
// their own table lists them all, and no other.
t.test('the table of each identity provider\'s settings holds every OIDC_<NAME>_ setting, and no other', async (t) => {
  const doc = await readFile('docs/configuration.md', 'utf8')
  const rows = [...doc.matchAll(/^\| `OIDC_<NAME>_([A-Z0-9_]+)` \|/gm)].map((m) => m[1]!)
  t.same(rows.sort(), [...PROVIDER_SETTINGS].sort(), 'the same settings, each once')
})
