import t from 'tap'
import { cruise, type ICruiseResult, type IForbiddenRuleType } from 'dependency-cruiser'
import extractTSConfig from 'dependency-cruiser/config-utl/extract-ts-config'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import ts from 'typescript'

// The layout the code keeps (issue 27, README "Development"), each rule a check that fails when a
// change breaks it. Reads the source only: no app, no database, the same on both engines.

const ROOT = join(import.meta.dirname, '..')

/**
 * Route files that hold more than one endpoint: resource files, whose endpoints share their guard
 * and schemas (README "Adding an endpoint"). Every other route file holds one endpoint.
 */
const RESOURCE_FILES: Record<string, number> = {
  'routes/api/admin/sessions.ts': 3,
  'routes/api/admin/users.ts': 7,
  'routes/api/admin/users/passkeys.ts': 2,
  'routes/api/auth/mfa/factors.ts': 2,
  'routes/api/auth/mfa/recovery-codes.ts': 2,
  'routes/api/auth/identities.ts': 3,
  'routes/api/auth/passkeys.ts': 3,
  'routes/api/auth/sessions.ts': 2,
  'routes/health.ts': 2,
  'routes/well-known/metadata.ts': 2
}

/** Kysely's query builders and the `sql` tag: what a query starts with (https://kysely.dev/docs/category/queries). */
const QUERY_STARTS = new Set(['selectFrom', 'selectNoFrom', 'insertInto', 'replaceInto', 'updateTable', 'deleteFrom', 'mergeInto', 'with', 'withRecursive', 'executeQuery', 'transaction'])
const HTTP_METHODS = new Set(['get', 'head', 'post', 'put', 'patch', 'delete', 'options', 'all', 'route'])

const rules: IForbiddenRuleType[] = [
  // Type-only imports count (tsPreCompilationDeps): a type cycle is a cycle too.
  { name: 'no-cycle', severity: 'error', from: {}, to: { circular: true } },
  { name: 'route-imports-route', severity: 'error', from: { path: '^routes/' }, to: { path: '^routes/' } },
  { name: 'sql-outside-services', severity: 'error', from: { path: '^(routes|plugins)/' }, to: { path: '(^|/)node_modules/kysely/' } },
  { name: 'lib-not-pure', severity: 'error', from: { path: '^src/lib/' }, to: { path: ['^src/(services|http)/', '(^|/)node_modules/(fastify|fastify-plugin|@fastify/[^/]+)/'] } }
]

async function cruised (): Promise<ICruiseResult> {
  const { output } = await cruise(['src', 'plugins', 'routes'], {
    baseDir: ROOT,
    tsPreCompilationDeps: true,
    doNotFollow: { path: 'node_modules' },
    // Packages' subpath exports (kysely/migration) resolve as Node resolves them.
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default', 'types'] },
    ruleSet: { forbidden: rules },
    validate: true
  }, {}, { tsConfig: extractTSConfig(join(ROOT, 'tsconfig.json')) })
  return output as ICruiseResult
}

const filesUnder = (folder: string): string[] => readdirSync(join(ROOT, folder), { recursive: true, encoding: 'utf8' })
  .filter((file) => file.endsWith('.ts')).map((file) => join(folder, file)).sort()

const parsed = (file: string): ts.SourceFile => ts.createSourceFile(file, readFileSync(join(ROOT, file), 'utf8'), ts.ScriptTarget.Latest, true)

function eachNode (node: ts.Node, visit: (node: ts.Node) => void): void {
  visit(node)
  node.forEachChild((child) => eachNode(child, visit))
}

/** Where `file` starts a query: a call of a Kysely query builder, or a `sql` tagged template. */
function queriesIn (file: string): string[] {
  const source = parsed(file)
  const found: string[] = []
  eachNode(source, (node) => {
    const tag = ts.isTaggedTemplateExpression(node) ? node.tag.getText(source) : undefined
    const called = ts.isCallExpression(node) && ts.isPropertyAccessExpression(node.expression) ? node.expression.name.text : undefined
    if ((tag !== undefined && /^sql\b/.test(tag)) || (called !== undefined && QUERY_STARTS.has(called))) {
      found.push(`${file}:${source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1} ${node.getText(source).split('\n')[0]}`)
    }
  })
  return found
}

/**
 * The endpoints a route file registers: calls of a route shorthand or `route` on the instance its
 * default export receives. Undefined where the file's default export is not a plugin function.
 */
function endpointsIn (file: string): number | undefined {
  const source = parsed(file)
  let exported: string | undefined
  eachNode(source, (node) => {
    if (ts.isExportAssignment(node) && ts.isIdentifier(node.expression)) exported = node.expression.text
  })
  let instance: string | undefined
  eachNode(source, (node) => {
    const plugin = ts.isVariableDeclaration(node) && ts.isIdentifier(node.name) && node.name.text === exported ? node.initializer : ts.isFunctionDeclaration(node) && node.name?.text === exported ? node : undefined
    if (plugin !== undefined && (ts.isArrowFunction(plugin) || ts.isFunctionExpression(plugin) || ts.isFunctionDeclaration(plugin))) {
      const first = plugin.parameters[0]?.name
      if (first !== undefined && ts.isIdentifier(first)) instance = first.text
    }
  })
  if (instance === undefined) return undefined
  let count = 0
  eachNode(source, (node) => {
    if (ts.isCallExpression(node) && ts.isPropertyAccessExpression(node.expression) && ts.isIdentifier(node.expression.expression) &&
      node.expression.expression.text === instance && HTTP_METHODS.has(node.expression.name.text)) count++
  })
  return count
}

t.test('the import graph', async (t) => {
  const result = await cruised()
  const { modules, summary } = result
  t.ok(modules.some((m) => m.source === 'routes/health.ts') && modules.some((m) => m.source.startsWith('src/lib/')), 'the cruise read the source folders')
  const unresolved = modules.flatMap((m) => m.dependencies.filter((d) => d.couldNotResolve).map((d) => `${m.source} -> ${d.module}`))
  t.same(unresolved, [], 'every import resolves, so no edge goes unchecked')
  const violations = (rule: string): string[] => summary.violations.filter((v) => v.rule.name === rule)
    .map((v) => v.cycle === undefined ? `${v.from} -> ${v.to}` : [v.from, ...v.cycle.map((step) => step.name)].join(' -> '))
  t.same(violations('no-cycle'), [], 'no import cycle among src/, plugins/ and routes/, type imports included')
  t.same(violations('route-imports-route'), [], 'no route file imports another')
  t.same(violations('sql-outside-services'), [], 'routes/ and plugins/ import nothing of Kysely: SQL lives in src/services')
  t.same(violations('lib-not-pure'), [], 'src/lib imports nothing of src/services, src/http or Fastify: pure helpers')
})

t.test('routes and plugins start no query', async (t) => {
  t.same([...filesUnder('routes'), ...filesUnder('plugins')].flatMap(queriesIn), [])
})

t.test('a route file registers one endpoint, a resource file the ones it lists', async (t) => {
  const files = filesUnder('routes')
  const counts = Object.fromEntries(files.map((file) => [file, endpointsIn(file)]))
  t.same(files.filter((file) => counts[file] === undefined), [], 'every route file exports its plugin function by name')
  const expected = Object.fromEntries(files.map((file) => [file, RESOURCE_FILES[file] ?? 1]))
  t.same(counts, expected)
  t.same(Object.keys(RESOURCE_FILES).filter((file) => !files.includes(file)), [], 'every resource file listed exists')
})
