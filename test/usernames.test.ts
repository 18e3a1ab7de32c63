import t from 'tap'
import { SCRIPTS, usernameProblem } from '../src/lib/usernames.ts'
import { build, postJson, uniqueUser } from './helper.ts'

t.test('names in one script, or Latin with the writings of Japanese, Chinese and Korean, pass', async (t) => {
  for (const name of ['alice', 'Émile', 'иван', 'γιώργος', 'محمد', 'יוסי', '田中', 'たなか', '田中taro', 'タナカ_01', '王小明', '김민준', 'kim.민준', 'a.b+c-d_e', '42', 'ǅemal']) {
    t.equal(usernameProblem(name.normalize('NFKC')), undefined, name)
  }
})

t.test('invisible and filler code points are refused', async (t) => {
  for (const name of ['\u3164', 'al\u3164ice', '\u1160bob', 'bob\u115f', 'x\uffa0y', 'al\u200dice', 'ali\u034fce', 'bo\ufe0fb']) {
    t.match(usernameProblem(name.normalize('NFKC')), /invisible or filler|letters, digits/, JSON.stringify(name))
  }
})

t.test('letters of scripts that look alike are not mixed (UTS #39)', async (t) => {
  // A Cyrillic а, a Greek ο, a Cyrillic о among Latin letters; Latin and Greek; Armenian and Latin.
  for (const name of ['\u0430lice', 'b\u03bfb', 'j\u043ehn', 'p\u0430ypal', 'alpha\u03b2', '\u0585k', 'иванivan', '김민준たなか']) {
    t.match(usernameProblem(name), /mix scripts/, JSON.stringify(name))
  }
})

t.test('every letter and digit Node.js knows has a script of the list', async (t) => {
  const known = SCRIPTS.map((s) => new RegExp(`\\p{scx=${s}}`, 'u'))
  const missing: string[] = []
  for (let cp = 0; cp < 0x110000; cp++) {
    if (cp >= 0xd800 && cp < 0xe000) continue
    const character = String.fromCodePoint(cp)
    if (!/[\p{L}\p{N}]/u.test(character) || /[\p{scx=Zyyy}\p{scx=Zinh}]/u.test(character)) continue
    if (!known.some((pattern) => pattern.test(character))) missing.push(cp.toString(16))
  }
  t.same(missing, [], `Unicode ${process.versions.unicode}`)
})

t.test('registration refuses them with a validation error naming the field', async (t) => {
  const app = await build(t)
  for (const username of ['\u0430lice', 'al\u3164ice']) {
    const res = await postJson(app, '/api/auth/register', { ...uniqueUser(), username })
    t.equal(res.statusCode, 400, JSON.stringify(username))
    t.match(res.json(), { code: 'validation_failed', errors: [{ field: 'username', message: /^Enter a valid username/ }] })
  }
  t.equal((await postJson(app, '/api/auth/register', { ...uniqueUser(), username: `иван${Date.now()}` })).statusCode, 201, 'one script, digits beside it')
})
