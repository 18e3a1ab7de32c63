import { dictionary } from '@zxcvbn-ts/language-common'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { passwordProblems } from '../src/lib/password-policy.ts'

// The list as the package gives it, and as the policy used it before it read its own file.
const packaged = dictionary['passwords-common'] as string[]
const common = new Set(packaged.map((p) => p.toLowerCase()))
const tooCommon = (password: string): boolean => passwordProblems(password, {}).includes('This password is too common.')

t.test('the shipped file is the package\'s list of common passwords, lower-cased and sorted', async (t) => {
  const text = await readFile(join(import.meta.dirname, '..', 'src', 'lib', 'common-passwords.txt'), 'latin1')
  t.ok(packaged.length > 40_000, `the package still has its list (${packaged.length} words)`)
  t.same(text, [...common].sort().join('\n') + '\n', 'regenerate it with the command in src/lib/password-policy.ts')
})

t.test('every common password is refused, in any case', async (t) => {
  const accepted = packaged.filter((word) => !tooCommon(word) || !tooCommon(word.toUpperCase()))
  t.same(accepted, [], `all ${packaged.length} words are refused`)
  t.ok(tooCommon('PassWord123'))
})

t.test('a password that is not on the list is not refused as common', async (t) => {
  // Neighbours of every word in the sorted order (a character more, the last one changed), and
  // strings before the first and after the last: where a binary search would go wrong.
  const others = new Set(['correct horse battery staple', '        ', '~~~~~~~~~~~~', 'zzzzzzzzzzzzzzzzzzzzzz', 'élan vital 1234'])
  for (const word of packaged) {
    others.add(word + '~')
    others.add(word.slice(0, -1) + String.fromCharCode(word.charCodeAt(word.length - 1) + 1))
  }
  for (const other of others) if (common.has(other.toLowerCase())) others.delete(other)
  t.ok(others.size > 50_000, `${others.size} strings that are not on the list`)
  const refused = [...others].filter(tooCommon)
  t.same(refused, [], 'none is refused as common')
  t.same(passwordProblems('correct horse battery staple', { username: 'someone', email: 'someone@example.com' }), [])
})
