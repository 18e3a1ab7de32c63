/** Waits that double from `first` up to `last` milliseconds: 250, 500, 1000, ... 5000, 5000. */
export class Backoff {
  readonly #first: number
  readonly #last: number
  #next: number

  constructor (first: number, last: number) {
    this.#first = first
    this.#last = last
    this.#next = first
  }

  /** The wait before the next attempt. */
  next (): number {
    const wait = this.#next
    this.#next = Math.min(wait * 2, this.#last)
    return wait
  }

  /** After a success: the next failure waits `first` again. */
  reset (): void {
    this.#next = this.#first
  }
}
