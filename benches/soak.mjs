// Soak: embedStream over a million texts of mixed length, sampling the process's memory as it
// goes, to show that memory stays flat once warmed up (no per-text leak in the stream, the
// pool, the binding or the Rust core).
//
//   npm run build && npm run bench:soak [-- --texts 1000000] [--model tiny|default|PATH]
//       [--warmup 100000] [--samples 20] [--workers N] [--high-water-mark 256] [--chunk-size 32]
//
// The default model runs about 120 texts/s on 2 cores (a million texts would take hours), so the
// default is the generated tiny BERT of the tests (__test__/fixtures/tiny-bert.ts, loaded
// through tsx), which is fast enough that the stream, the queue and the binding dominate. With
// `--model default`, give it a warm-up of several thousand texts: ONNX Runtime's arenas grow
// until they have seen the largest batch shapes.
// Prints the RSS and heap curve (start, after warm-up, evenly spaced points, end) and whether
// RSS stayed flat after warm-up. A benchmark reports; it exits 0 either way.
import { mkdtempSync, rmSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

import { Pool } from '../dist/index.js'
import { seeded } from './lib/random.mjs'

const { values } = parseArgs({
  options: {
    texts: { type: 'string', default: '1000000' },
    model: { type: 'string', default: 'tiny' },
    warmup: { type: 'string' },
    samples: { type: 'string', default: '20' },
    workers: { type: 'string', default: String(Math.min(availableParallelism(), 4)) },
    'high-water-mark': { type: 'string', default: '256' },
    'chunk-size': { type: 'string', default: '32' },
  },
})
const total = Number(values.texts)
const warmup = Number(values.warmup ?? Math.min(100_000, Math.floor(total / 10)))
const every = Math.max(1, Math.floor((total - warmup) / Number(values.samples)))

/** RSS may grow by this much after warm-up and still count as flat. */
const FLAT_BYTES = 16 * 1024 * 1024
const FLAT_FRACTION = 0.05

// The model.
let fixture
let model = values.model
if (model === 'tiny') {
  const { writeTinyBert } = await import('../__test__/fixtures/tiny-bert.ts')
  fixture = mkdtempSync(join(tmpdir(), 'inferpool-soak-'))
  model = writeTinyBert(join(fixture, 'tiny-bert'))
}

// Texts: deterministic, of mixed length (1 to ~300 words; some beyond the model's maximum
// length), generated as they are pulled, so the source itself holds no memory.
const WORDS = (
  'the man is eating food bread piece of a dog cat runs and river stone quietly bright ' +
  'photosynthesis glacier orchestra umbrella 2026 3.14 émigré naïve 東京 😀 !'
).split(' ')
function* texts(count) {
  const next = seeded()
  for (let i = 0; i < count; i++) {
    const shape = next(100)
    const length = shape < 60 ? 1 + next(16) : shape < 95 ? 16 + next(64) : 80 + next(220)
    const words = []
    for (let w = 0; w < length; w++) words.push(WORDS[next(WORDS.length)])
    yield `${i} ${words.join(' ')}`
  }
}

const mib = (bytes) => (bytes / 1024 / 1024).toFixed(1)
const samples = []
function sample(done, started) {
  const { rss, heapUsed, external, arrayBuffers } = process.memoryUsage()
  samples.push({ done, seconds: (performance.now() - started) / 1000, rss, heapUsed, external, arrayBuffers })
}

const pool = await Pool.create({ model, cpuWorkers: Number(values.workers) })
console.log(
  `soak: ${total.toLocaleString('en')} texts through embedStream, model ${values.model} ` +
    `(${pool.dimension} dimensions, maxLength ${pool.maxLength}), ${values.workers} CPU workers, ` +
    `highWaterMark ${values['high-water-mark']}, chunkSize ${values['chunk-size']}; ` +
    `warm-up ${warmup.toLocaleString('en')} texts, a sample every ${every.toLocaleString('en')}`,
)

const started = performance.now()
sample(0, started)
let done = 0
let checksum = 0
let outOfOrder = 0
for await (const { index, embedding } of pool.embedStream(texts(total), {
  highWaterMark: Number(values['high-water-mark']),
  chunkSize: Number(values['chunk-size']),
})) {
  if (index !== done) outOfOrder++
  checksum += embedding[0]
  done++
  if (done === warmup || (done > warmup && (done - warmup) % every === 0) || done === total) sample(done, started)
}
const seconds = (performance.now() - started) / 1000
await pool.close()
if (fixture) rmSync(fixture, { recursive: true, force: true })

// Report.
console.log('')
console.log('| texts | s | texts/s (since previous) | RSS MiB | heap used MiB | external MiB |')
console.log('|---:|---:|---:|---:|---:|---:|')
for (const [i, s] of samples.entries()) {
  const previous = samples[i - 1]
  const rate = previous ? ((s.done - previous.done) / (s.seconds - previous.seconds)).toFixed(0) : '–'
  const label =
    s.done === 0
      ? '0 (start)'
      : s.done === warmup
        ? `${s.done.toLocaleString('en')} (warm)`
        : s.done.toLocaleString('en')
  console.log(
    `| ${label} | ${s.seconds.toFixed(1)} | ${rate} | ${mib(s.rss)} | ${mib(s.heapUsed)} | ${mib(s.external)} |`,
  )
}

const start = samples[0]
const warm = samples.find((s) => s.done === warmup) ?? start
const end = samples.at(-1)
const after = samples.filter((s) => s.done >= warmup)
const peak = Math.max(...after.map((s) => s.rss))
// Least-squares slope of RSS over texts after warm-up, in MiB per 100,000 texts.
const meanX = after.reduce((a, s) => a + s.done, 0) / after.length
const meanY = after.reduce((a, s) => a + s.rss, 0) / after.length
const covariance = after.reduce((a, s) => a + (s.done - meanX) * (s.rss - meanY), 0)
const variance = after.reduce((a, s) => a + (s.done - meanX) ** 2, 0)
const slope = variance > 0 ? ((covariance / variance) * 100_000) / 1024 / 1024 : 0
const allowance = Math.max(FLAT_BYTES, FLAT_FRACTION * warm.rss)
const flat = end.rss - warm.rss <= allowance && peak - warm.rss <= 2 * allowance

console.log('')
console.log(
  `${done.toLocaleString('en')} texts in ${seconds.toFixed(1)} s (${(done / seconds).toFixed(0)} texts/s); ` +
    `in order: ${outOfOrder === 0 ? 'yes' : `no (${outOfOrder} out of place)`}; checksum ${checksum.toFixed(3)}`,
)
console.log(
  `RSS: start ${mib(start.rss)} MiB, after warm-up ${mib(warm.rss)} MiB, peak after warm-up ${mib(peak)} MiB, ` +
    `end ${mib(end.rss)} MiB (${end.rss >= warm.rss ? '+' : ''}${mib(end.rss - warm.rss)} MiB since warm-up; ` +
    `slope ${slope.toFixed(2)} MiB per 100,000 texts)`,
)
console.log(
  `heap used: start ${mib(start.heapUsed)} MiB, after warm-up ${mib(warm.heapUsed)} MiB, end ${mib(end.heapUsed)} MiB`,
)
console.log(
  flat
    ? `memory stayed flat after warm-up (RSS within ${mib(allowance)} MiB of the warm-up level)`
    : `memory did NOT stay flat after warm-up: RSS grew by ${mib(end.rss - warm.rss)} MiB (allowance ${mib(allowance)} MiB)`,
)
