import t from 'tap'
import { grouped } from '../src/lib/grouped.ts'

// src/lib/grouped.ts: the refreshes' group commit (src/services/sessions/sessions.ts).

/** A run whose calls the test answers one by one: each group it was given, in order. */
function controlled () {
  const groups: Array<{ items: string[], answer: () => void, fail: (error: Error) => void }> = []
  const run = (items: string[]): Promise<string[]> => new Promise((resolve, reject) => {
    groups.push({ items, answer: () => { resolve(items.map((item) => `${item}!`)) }, fail: reject })
  })
  return { groups, run }
}
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))
const keyOf = (item: string): string => item.split(':')[0]!

t.test('a call goes at once while fewer groups run than allowed; the others wait and go together', async (t) => {
  const { groups, run } = controlled()
  const call = grouped(run, { running: 1, max: 100, key: (item) => item })
  const first = call('a')
  t.same(groups.map((g) => g.items), [['a']], 'alone, without waiting')
  const later = ['b', 'c', 'd'].map((item) => call(item))
  t.same(call.state(), { waiting: 3, running: 1, calls: 4, groups: 1 })
  t.equal(groups.length, 1, 'nothing more runs while the first group does')
  groups[0]!.answer()
  t.equal(await first, 'a!')
  await settle()
  t.same(groups.map((g) => g.items), [['a'], ['b', 'c', 'd']], 'every call that waited, in one group, in the order they came')
  groups[1]!.answer()
  t.same(await Promise.all(later), ['b!', 'c!', 'd!'], 'each call its own answer')
  t.same(call.state(), { waiting: 0, running: 0, calls: 4, groups: 2 })
})

t.test('up to `running` groups at once, each of at most `max` calls', async (t) => {
  const { groups, run } = controlled()
  const call = grouped(run, { running: 2, max: 2, key: (item) => item })
  const answers = ['a', 'b', 'c', 'd', 'e', 'f'].map((item) => call(item))
  t.same(groups.map((g) => g.items), [['a'], ['b']], 'two alone at once')
  groups[0]!.answer()
  await settle()
  t.same(groups.map((g) => g.items).slice(2), [['c', 'd']], 'then max at a time')
  groups[1]!.answer()
  await settle()
  t.same(groups.map((g) => g.items).slice(3), [['e', 'f']])
  groups[2]!.answer()
  groups[3]!.answer()
  t.same(await Promise.all(answers), ['a!', 'b!', 'c!', 'd!', 'e!', 'f!'])
})

t.test('calls of one key never run in two groups at once, and join one group', async (t) => {
  const { groups, run } = controlled()
  const call = grouped(run, { running: 3, max: 100, key: keyOf })
  const answers = [call('s1:a')]
  answers.push(call('s1:b'), call('s2:a'), call('s1:c'))
  t.same(groups.map((g) => g.items), [['s1:a'], ['s2:a']], 's1 waits for the group holding it; s2 goes')
  t.same(call.state(), { waiting: 2, running: 2, calls: 4, groups: 2 })
  groups[0]!.answer()
  await settle()
  t.same(groups.map((g) => g.items).slice(2), [['s1:b', 's1:c']], 'the calls of s1 that waited go together')
  groups[1]!.answer()
  groups[2]!.answer()
  t.same(await Promise.all(answers), ['s1:a!', 's1:b!', 's2:a!', 's1:c!'])
})

t.test('a failed run is the failure of each call of its group, and of no other', async (t) => {
  const { groups, run } = controlled()
  const call = grouped(run, { running: 1, max: 100, key: (item) => item })
  const first = call('a')
  const rest = [call('b'), call('c')]
  groups[0]!.fail(new Error('database gone'))
  await t.rejects(first, { message: 'database gone' })
  await settle()
  groups[1]!.fail(new Error('lock timeout'))
  for (const answer of rest) await t.rejects(answer, { message: 'lock timeout' })
  const after = call('d')
  groups[2]!.answer()
  t.equal(await after, 'd!', 'the next call runs')
})
