/** How to make a secret that passes, for the message that refuses one. */
export const MAKE_A_SECRET = 'make one with `openssl rand -base64 48` or `node -e "console.log(crypto.randomBytes(48).toString(\'base64url\'))"`'

/**
 * A rough upper bound of the bits of a secret, to catch the mistakes people make, not to grade
 * a good secret: its length times log2 of the number of distinct characters in it. 32 × `a` has
 * none, `abcd` repeated has 2 a character; 32 random hex digits have about 120, 16 random base64
 * characters about 60. A secret that is one shorter text repeated counts as that text.
 */
export function estimatedBits (secret: string): number {
  const characters = [...secret]
  let period = characters.length
  for (let p = 1; p <= characters.length / 2; p++) {
    if (characters.length % p === 0 && characters.every((c, i) => c === characters[i % p])) {
      period = p
      break
    }
  }
  const distinct = new Set(characters).size
  return distinct <= 1 ? 0 : period * Math.log2(distinct)
}

/** Why `secret` is too weak to hold `minBits`, or undefined. */
export function secretWeakness (secret: string, minBits: number): string | undefined {
  const bits = Math.floor(estimatedBits(secret))
  return bits < minBits ? `looks guessable (repeated or few distinct characters: about ${bits} bits, at least ${minBits} needed)` : undefined
}
