export interface GroupOptions<I> {
  /** How many groups may run at once. */
  running: number
  /** The most calls in one group. */
  max: number
  /** Calls of one key never run in two groups at once: they wait for the group holding it, or join one. */
  key: (item: I) => string
}

/** How many calls wait and how many groups run now; how many calls and groups there were. */
export interface GroupState { waiting: number, running: number, calls: number, groups: number }

/** A grouped call, and its state. */
export type Grouped<I, O> = ((item: I) => Promise<O>) & { state: () => GroupState }

interface Call<I, O> { item: I, resolve: (answer: O) => void, reject: (error: unknown) => void }

/**
 * Calls of `run` made together, as a database's group commit makes one flush of many commits:
 * a call goes at once while fewer than `running` groups run; otherwise it waits, and the next
 * group to start takes every waiting call (up to `max`), one `run` for all of them. So a quiet
 * service answers each call alone, with no delay, and a busy one makes fewer, larger calls.
 * `run` answers each item in the order given; its failure is each call's.
 */
export function grouped<I, O> (run: (items: I[]) => Promise<O[]>, options: GroupOptions<I>): Grouped<I, O> {
  const waiting: Array<Call<I, O>> = []
  const busy = new Set<string>()
  let running = 0
  let calls = 0
  let groups = 0

  // The waiting calls whose key no running group holds, in the order they came, up to max.
  function take (): Array<Call<I, O>> {
    const group: Array<Call<I, O>> = []
    for (let i = 0; i < waiting.length && group.length < options.max;) {
      if (busy.has(options.key(waiting[i]!.item))) i++
      else group.push(...waiting.splice(i, 1))
    }
    return group
  }

  function next (): void {
    while (running < options.running) {
      const group = take()
      if (group.length === 0) return
      const keys = new Set(group.map((call) => options.key(call.item)))
      for (const key of keys) busy.add(key)
      running++
      groups++
      run(group.map((call) => call.item)).then(
        (answers) => { group.forEach((call, i) => { call.resolve(answers[i]!) }) },
        (error: unknown) => { for (const call of group) call.reject(error) }
      ).finally(() => {
        running--
        for (const key of keys) busy.delete(key)
        next()
      })
    }
  }

  const call = (item: I): Promise<O> => new Promise<O>((resolve, reject) => {
    calls++
    waiting.push({ item, resolve, reject })
    next()
  })
  return Object.assign(call, { state: (): GroupState => ({ waiting: waiting.length, running, calls, groups }) })
}
