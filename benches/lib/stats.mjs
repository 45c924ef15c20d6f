// Summary statistics for the measurements.

/** Nearest-rank percentile of a list of numbers (NaN when empty). */
export function percentile(values, p) {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

export function mean(values) {
  return values.reduce((sum, x) => sum + x, 0) / values.length
}
