import { readFile } from 'node:fs/promises'
import t from 'tap'
import { ConfigSchema } from '../src/config.ts'

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
