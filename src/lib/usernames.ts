/** Letters, digits and . + - _ (no @: an identifier with @ is always an email): the schema's pattern and the service's. */
export const USERNAME_PATTERN = '^[\\p{L}\\p{N}.+_-]{1,150}$'
const USERNAME = new RegExp(USERNAME_PATTERN, 'u')

// Invisible code points (Default_Ignorable_Code_Point: U+3164 HANGUL FILLER, U+115F and U+1160,
// U+FFA0, variation selectors, joiners) make two names that look the same.
const INVISIBLE = /\p{Default_Ignorable_Code_Point}/u

// Every script of Unicode 17 (ISO 15924 codes) but Common and Inherited, which go with any;
// test/usernames.test.ts proves every letter, digit and mark Node.js knows has one of them.
export const SCRIPTS = [
  'Latn', 'Cyrl', 'Grek', 'Arab', 'Hebr', 'Hani', 'Hira', 'Kana', 'Hang', 'Bopo', 'Deva', 'Beng', 'Thai',
  'Adlm', 'Ahom', 'Hluw', 'Armn', 'Avst', 'Bali', 'Bamu', 'Bass', 'Batk', 'Bhks', 'Brah', 'Brai', 'Bugi',
  'Buhd', 'Cans', 'Cari', 'Aghb', 'Cakm', 'Cham', 'Cher', 'Chrs', 'Copt', 'Xsux', 'Cprt', 'Cpmn', 'Dsrt',
  'Diak', 'Dogr', 'Dupl', 'Egyp', 'Elba', 'Elym', 'Ethi', 'Geor', 'Glag', 'Goth', 'Gran', 'Gujr', 'Gong',
  'Guru', 'Rohg', 'Hano', 'Hatr', 'Armi', 'Phli', 'Prti', 'Java', 'Kthi', 'Knda', 'Kali', 'Khar', 'Kits',
  'Khmr', 'Khoj', 'Sind', 'Laoo', 'Lepc', 'Limb', 'Lina', 'Linb', 'Lisu', 'Lyci', 'Lydi', 'Mahj', 'Maka',
  'Mlym', 'Mand', 'Mani', 'Marc', 'Gonm', 'Medf', 'Mtei', 'Mend', 'Merc', 'Mero', 'Plrd', 'Modi', 'Mong',
  'Mroo', 'Mult', 'Mymr', 'Nbat', 'Nand', 'Talu', 'Newa', 'Nkoo', 'Nshu', 'Hmnp', 'Ogam', 'Olck', 'Hung',
  'Ital', 'Narb', 'Perm', 'Xpeo', 'Sogo', 'Sarb', 'Orkh', 'Ougr', 'Orya', 'Osge', 'Osma', 'Hmng', 'Palm',
  'Pauc', 'Phag', 'Phnx', 'Phlp', 'Rjng', 'Runr', 'Samr', 'Saur', 'Shrd', 'Shaw', 'Sidd', 'Sgnw', 'Sinh',
  'Sogd', 'Sora', 'Soyo', 'Sund', 'Sylo', 'Syrc', 'Tglg', 'Tagb', 'Tale', 'Lana', 'Tavt', 'Takr', 'Taml',
  'Tnsa', 'Tang', 'Telu', 'Thaa', 'Tibt', 'Tfng', 'Tirh', 'Toto', 'Ugar', 'Vaii', 'Vith', 'Wcho', 'Wara',
  'Yezi', 'Yiii', 'Zanb', 'Kawi', 'Nagm', 'Gara', 'Gukh', 'Krai', 'Onao', 'Sunu', 'Todr', 'Tutg', 'Berf',
  'Sidt', 'Tayo', 'Tols'
] as const
type Script = (typeof SCRIPTS)[number]
const SCRIPT_PATTERNS = SCRIPTS.map((script) => [script, new RegExp(`\\p{scx=${script}}`, 'u')] as const)
const ANY_SCRIPT = /[\p{scx=Zyyy}\p{scx=Zinh}]/u

// UTS #39 §5.2, Highly Restrictive: one script, or Latin with one of the writings of Japanese,
// Chinese or Korean (whose texts mix scripts by nature).
const ALLOWED_MIXES: ReadonlyArray<ReadonlySet<Script>> = [
  new Set(['Latn', 'Hani', 'Hira', 'Kana']),
  new Set(['Latn', 'Hani', 'Bopo']),
  new Set(['Latn', 'Hani', 'Hang'])
]

/** The scripts a character is written in (its Script_Extensions); undefined for Common and Inherited, which go with any. */
function scriptsOf (character: string): Script[] | undefined {
  if (ANY_SCRIPT.test(character)) return undefined
  return SCRIPT_PATTERNS.filter(([, pattern]) => pattern.test(character)).map(([script]) => script)
}

/**
 * Whether a name keeps to one script as UTS #39 §5.1 resolves it (the scripts every character
 * shares), or to one of the allowed mixes: "аlice" with a Cyrillic а does not.
 */
function isSingleScript (name: string): boolean {
  const sets = [...name].map(scriptsOf).filter((s) => s !== undefined)
  if (sets.length === 0) return true
  if (sets[0]!.some((script) => sets.every((set) => set.includes(script)))) return true
  return ALLOWED_MIXES.some((mix) => sets.every((set) => set.some((script) => mix.has(script))))
}

/** NFKC, as Django's AbstractBaseUser.normalize_username does. */
export function normalizeUsername (username: string): string {
  return username.normalize('NFKC')
}

/** Why a username (already NFKC-normalised) is refused, or undefined. */
export function usernameProblem (username: string): string | undefined {
  if (!USERNAME.test(username)) return 'Enter a valid username: letters, digits and . + - _ only.'
  if (INVISIBLE.test(username)) return 'Enter a valid username: it holds an invisible or filler character.'
  if (!isSingleScript(username)) return 'Enter a valid username: its letters mix scripts (such as Latin and Cyrillic) that look alike.'
  return undefined
}
