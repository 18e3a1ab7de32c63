import t from 'tap'
import { ratio } from '../bench/report.ts'

// `npm run bench` judges each figure on its value and prints it: what it prints must not read
// as met when the judgement says not met.
t.test('a ratio is shown with the digits that decide its target', async (t) => {
  t.equal(ratio(0.0197), '0.0197', 'a passkey sign-in at 0.0197 of the floor misses 0.02, and shows it')
  t.equal(ratio(0.0203), '0.0203')
  t.equal(ratio(0.0499), '0.0499', 'not 0.050 against a target of 0.05')
  t.equal(ratio(0.000377), '0.000377', 'a login beside the floor')
  t.equal(ratio(0), '0.00')
  t.equal(ratio(0.584), '0.584', 'three decimals from 0.1 up')
  t.equal(ratio(1.8049), '1.805')
})
