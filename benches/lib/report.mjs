// Turns the measured rows into the markdown table and the summary lines.
import { availableParallelism, cpus, loadavg } from 'node:os'

import { cosine } from './vectors.mjs'

const HEADER = ['workload', 'contender', 'items/s', 'p50 ms', 'p99 ms', 'loop p99 ms', 'CPU ms/item']

function fixed(value, digits) {
  return Number.isFinite(value) ? value.toFixed(digits) : '–'
}

/** One markdown table, rows in workload order then contender order. */
export function table(rows) {
  const lines = [`| ${HEADER.join(' | ')} |`, `|${HEADER.map((_, i) => (i < 2 ? '---' : '---:')).join('|')}|`]
  for (const { workload, contender, result, error } of rows) {
    const cells = error
      ? ['failed', '', '', '', '']
      : [
          fixed(result.itemsPerSecond, 1),
          fixed(result.p50, 1),
          fixed(result.p99, 1),
          fixed(result.loopP99, 2),
          fixed(result.cpuMsPerItem, 2),
        ]
    lines.push(`| ${[workload.label, contender.label, ...cells].join(' | ')} |`)
  }
  return lines.join('\n')
}

/**
 * Per workload, inferpool's figure divided by the best peer's (the highest items/s, the lowest
 * p99 latency, the lowest CPU per item), naming that peer.
 */
export function ratios(rows, workloads) {
  const lines = []
  for (const workload of workloads) {
    const here = rows.filter((row) => row.workload === workload && row.result)
    const ours = here.find((row) => row.contender.id === 'inferpool')?.result
    const peers = here.filter((row) => row.contender.peer)
    if (!ours || peers.length === 0) continue
    const part = (name, key, better) => {
      const peer = peers.reduce((a, b) => (better(b.result[key], a.result[key]) ? b : a))
      return `${name} ${fixed(ours[key] / peer.result[key], 2)}× (vs ${peer.contender.label})`
    }
    lines.push(
      `- ${workload.label}: ` +
        [
          part('items/s', 'itemsPerSecond', (a, b) => a > b),
          part('p99 latency', 'p99', (a, b) => a < b),
          part('CPU/item', 'cpuMsPerItem', (a, b) => a < b),
        ].join(', '),
    )
  }
  return lines
}

/**
 * Cosine of each contender's vectors against inferpool's on the same texts. The verdict covers
 * the texts within the token limit; truncated texts are listed apart, since where a library cuts
 * a long text (before or after adding [CLS]/[SEP]) moves its vector a little.
 */
export function outputCheck(checks, reference, truncated, threshold) {
  const lines = []
  for (const { contender, vectors } of checks) {
    const cosines = vectors.map((vector, i) => cosine(vector, reference[i]))
    const whole = cosines.filter((_, i) => !truncated[i])
    const cut = cosines.filter((_, i) => truncated[i])
    const worst = Math.min(...whole)
    const verdict = worst > threshold ? 'ok' : `MISMATCH (below ${threshold})`
    const list = (values) => values.map((c) => c.toFixed(5)).join(', ')
    lines.push(
      `- ${contender.label}: ${list(whole)} (min ${worst.toFixed(5)}, ${verdict})` +
        (cut.length > 0 ? `; truncated: ${list(cut)}` : ''),
    )
    if (contender.id === 'transformers' && cut.some((c) => c <= threshold)) {
      lines.push(
        '  (transformers.js truncates after adding [CLS] … [SEP], so a truncated text loses its [SEP]; ' +
          'inferpool and the hand-written peers keep it, as the Rust tokenizers crate does)',
      )
    }
  }
  return lines
}

export function machine() {
  const cores = cpus()
  return (
    `machine: ${cores[0]?.model.trim() ?? 'unknown CPU'}, ${cores.length} cores ` +
    `(availableParallelism ${availableParallelism()}), Node ${process.version}, ${process.platform} ${process.arch}, ` +
    `load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`
  )
}
