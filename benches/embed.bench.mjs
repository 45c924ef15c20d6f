// Cross-caller batching against one-call-at-a-time, same pool, same texts, same run.
// Usage: npm run bench [-- --texts 2000]  (builds nothing; run `npm install` first)
import { readFileSync } from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { parseArgs } from 'node:util'

import { Pool, chunkText } from '../dist/index.js'

const { values } = parseArgs({ options: { texts: { type: 'string', default: '2000' } } })
const count = Number(values.texts)

// Real prose: this repository's README, chunked into sentences of varied length.
const sentences = chunkText(readFileSync(new URL('../README.md', import.meta.url), 'utf8'), { maxChars: 200 })
const texts = Array.from({ length: count }, (_, i) => sentences[i % sentences.length])

async function measure(name, items, fn) {
  const histogram = monitorEventLoopDelay({ resolution: 1 })
  histogram.enable()
  const started = performance.now()
  await fn()
  const seconds = (performance.now() - started) / 1000
  histogram.disable()
  return { name, items, seconds, rate: items / seconds, loopP99: histogram.percentile(99) / 1e6 }
}

const pool = await Pool.create()
await pool.embed(texts.slice(0, 32)) // warm up
const sequentialCount = Math.min(count, 300)
const rows = [
  await measure(`${sequentialCount} single-text calls, one at a time (baseline)`, sequentialCount, async () => {
    for (const text of texts.slice(0, sequentialCount)) await pool.embed([text])
  }),
  await measure(`${count} single-text calls, concurrent (batched across callers)`, count, () =>
    Promise.all(texts.map((text) => pool.embed([text]))),
  ),
  await measure(`${count} texts in calls of 160`, count, () =>
    Promise.all(
      Array.from({ length: Math.ceil(count / 160) }, (_, c) => pool.embed(texts.slice(c * 160, c * 160 + 160))),
    ),
  ),
]
await pool.close()

const baseline = rows[0].rate
console.log(`inferpool ${pool.runtime.version} · default model · ${pool.dimension} dims`)
console.log('| workload | items/s | vs baseline | event-loop p99 (ms) |')
console.log('|---|---:|---:|---:|')
for (const r of rows) {
  console.log(`| ${r.name} | ${r.rate.toFixed(1)} | ${(r.rate / baseline).toFixed(2)}× | ${r.loopP99.toFixed(2)} |`)
}
