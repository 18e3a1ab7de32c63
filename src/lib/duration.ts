const UNIT_SECONDS = { s: 1, m: 60, h: 3600, d: 86400 } as const

/** "300" or "300s" -> 300, "15m" -> 900, "7d" -> 604800: the config schema guarantees the shape. */
export function durationToSeconds (value: string): number {
  const unit = value.at(-1) as string
  if (unit in UNIT_SECONDS) {
    return Number(value.slice(0, -1)) * UNIT_SECONDS[unit as keyof typeof UNIT_SECONDS]
  }
  return Number(value)
}
