/** The median of `values`. */
export const median = (values: number[]): number => [...values].sort((a, b) => a - b)[values.length >> 1]!

/** How long `run` takes, in milliseconds. */
async function timed (run: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint()
  await run()
  return Number(process.hrtime.bigint() - start) / 1e6
}

/**
 * How `a`'s time compares with `b`'s: the median of the ratios of `pairs` pairs (after `warmup`
 * pairs not counted), each pair taken back to back, in the order ABBA, so that a drift of a loaded
 * machine (CI runs three files at once) falls on both of a pair alike; `prepare`, untimed, before
 * each pair. A ratio, never a bound on time: the same on a slow machine as on a fast one.
 */
export async function pairedRatio (a: () => Promise<unknown>, b: () => Promise<unknown>, { pairs = 60, warmup = 10, prepare = async () => {} } = {}): Promise<{ ratio: number, a: number, b: number }> {
  for (let i = 0; i < warmup; i++) {
    await prepare()
    await (i % 2 === 0 ? a : b)()
  }
  const as: number[] = []
  const bs: number[] = []
  for (let i = 0; i < pairs; i++) {
    // Untimed: what each pair starts from.
    await prepare()
    const pair = [async () => as.push(await timed(a)), async () => bs.push(await timed(b))]
    for (const run of i % 2 === 0 ? pair : pair.reverse()) await run()
  }
  return { ratio: median(as.map((ms, i) => ms / bs[i]!)), a: median(as), b: median(bs) }
}
