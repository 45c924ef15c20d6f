// Prometheus text exposition (format 0.0.4) of a pool's counters and histograms, so that a
// service can append `pool.metrics()` to what prom-client's `register.metrics()` serves on
// `/metrics`. Metric names are prefixed `inferpool_`; none collides with prom-client's defaults.

/** A histogram as the native pool reports it: cumulative counts per upper bound. */
export interface HistogramData {
  bounds: number[]
  counts: number[]
  count: number
  sum: number
}

/** Labels of one sample. */
export type Labels = Record<string, string>

/** One metric family. */
export type Family =
  | { name: string; help: string; type: 'counter' | 'gauge'; samples: { labels: Labels; value: number }[] }
  | { name: string; help: string; type: 'histogram'; samples: { labels: Labels; value: HistogramData }[] }

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

function formatLabels(labels: Labels): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`)
  return pairs.length === 0 ? '' : `{${pairs.join(',')}}`
}

function formatNumber(value: number): string {
  if (Number.isNaN(value)) return 'NaN'
  if (value === Infinity) return '+Inf'
  if (value === -Infinity) return '-Inf'
  return String(value)
}

/** Renders `families` in the Prometheus text format. */
export function exposition(families: Family[]): string {
  const lines: string[] = []
  for (const family of families) {
    lines.push(`# HELP ${family.name} ${family.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`)
    lines.push(`# TYPE ${family.name} ${family.type}`)
    if (family.type !== 'histogram') {
      for (const s of family.samples) lines.push(`${family.name}${formatLabels(s.labels)} ${formatNumber(s.value)}`)
      continue
    }
    for (const { labels, value } of family.samples) {
      value.bounds.forEach((bound, i) => {
        const le = formatLabels({ ...labels, le: formatNumber(bound) })
        lines.push(`${family.name}_bucket${le} ${value.counts[i]}`)
      })
      lines.push(`${family.name}_bucket${formatLabels({ ...labels, le: '+Inf' })} ${value.count}`)
      lines.push(`${family.name}_sum${formatLabels(labels)} ${formatNumber(value.sum)}`)
      lines.push(`${family.name}_count${formatLabels(labels)} ${value.count}`)
    }
  }
  return lines.join('\n') + '\n'
}

/**
 * The `q` quantile (0–1) of a histogram, interpolated linearly inside its bucket as Prometheus'
 * `histogram_quantile` does; `null` without observations. Observations above the last bound
 * report that bound.
 */
export function quantile(histogram: HistogramData, q: number): number | null {
  const { bounds, counts, count } = histogram
  if (count === 0) return null
  const rank = q * count
  let below = 0
  let lower = 0
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      const inBucket = counts[i] - below
      return inBucket === 0 ? bounds[i] : lower + ((bounds[i] - lower) * (rank - below)) / inBucket
    }
    below = counts[i]
    lower = bounds[i]
  }
  return bounds[bounds.length - 1] ?? null
}
