// A mixed two-model run: the built-in model and a second one, called from many places at once,
// with a memory budget that holds one model per worker, so workers load, evict and switch while
// calls are in flight. Prints a status() snapshot and a metrics() excerpt taken mid-run, and the
// totals at the end.
//
//   npm run build && node benches/models.mjs [--second PATH] [--workers N] [--calls N]
//
// The second model defaults to the built-in one with CLS pooling: a second session of the same
// size, so that a worker's share of the budget holds one of them and switching is real.
import { availableParallelism } from 'node:os'
import { parseArgs } from 'node:util'

import { Pool } from '../dist/index.js'
import { buildCorpus } from './lib/corpus.mjs'

const { values } = parseArgs({
  options: {
    second: { type: 'string' },
    workers: { type: 'string', default: String(Math.min(availableParallelism(), 4)) },
    calls: { type: 'string', default: '240' },
  },
})
const second = values.second ? { path: values.second } : { path: 'default', pooling: 'cls' }
const workers = Number(values.workers)
const callCount = Number(values.calls)

// Budget: each worker's share holds the larger model alone, not both.
const probe = await Pool.create({ models: { minilm: 'default', second }, cpuWorkers: 1 })
const sizes = Object.values(probe.status().models).map((m) => m.memoryBytes)
await probe.close()
const share = Math.max(...sizes) * 1.1

const pool = await Pool.create({
  models: { minilm: 'default', second },
  cpuWorkers: workers,
  cpuMemoryBytes: share * workers,
  intraOpThreads: 1,
})
const events = {}
for (const type of ['model-loaded', 'model-unloaded', 'model-evicted', 'model-load-failed']) {
  pool.on(type, () => (events[type] = (events[type] ?? 0) + 1))
}

const { texts } = buildCorpus(2000)
let next = 0
const calls = Array.from({ length: callCount }, (_, c) => ({
  // Bursts: a run of calls for one model, then a run for the other.
  model: Math.floor(c / 12) % 3 === 2 ? 'second' : 'minilm',
  texts: Array.from({ length: 1 + (c % 8) }, () => texts[next++ % texts.length]),
}))
const started = performance.now()
let done = 0
let snapshot
const results = calls.map((call) =>
  pool.embed(call.texts, { model: call.model }).then(() => {
    done++
    if (done === Math.floor(callCount / 2)) snapshot = { status: pool.status(), metrics: pool.metrics() }
  }),
)
await Promise.all(results)
const seconds = (performance.now() - started) / 1000
const final = pool.status()
await pool.close()

const brief = (status) => ({
  queued: status.queued,
  inFlight: status.inFlight,
  items: status.items,
  workers: status.workers.map((w) => ({
    id: w.id,
    state: w.state,
    loadedModels: w.loadedModels,
    items: w.items,
    batches: w.batches,
    meanBatchSize: Number(w.meanBatchSize.toFixed(2)),
    switches: w.switches,
    evictions: w.evictions,
    memoryUsedBytes: w.memoryUsedBytes,
    memoryBudgetBytes: Math.round(w.memoryBudgetBytes),
  })),
  models: Object.fromEntries(
    Object.entries(status.models).map(([name, m]) => [
      name,
      {
        dimension: m.dimension,
        loadedOn: m.loadedOn,
        queued: m.queued,
        inFlight: m.inFlight,
        items: m.items,
        loads: m.loads,
        evictions: m.evictions,
        p50Ms: m.latencyMs.p50 && Number(m.latencyMs.p50.toFixed(1)),
        p99Ms: m.latencyMs.p99 && Number(m.latencyMs.p99.toFixed(1)),
      },
    ]),
  ),
})
const excerpt = snapshot.metrics
  .split('\n')
  .filter((line) =>
    /^inferpool_(items_total|switches_total|model_(loads|evictions)_total|model_loaded|queued_items|request_duration_seconds_(count|sum))[{ ]/.test(
      line,
    ),
  )
  .join('\n')
console.log('== status() mid-run')
console.log(JSON.stringify(brief(snapshot.status), null, 1))
console.log('== metrics() excerpt mid-run')
console.log(excerpt)
console.log('== end')
console.log(JSON.stringify({ events, ...brief(final) }, null, 1))
const submitted = calls.reduce((n, c) => n + c.texts.length, 0)
console.log(`${submitted} texts in ${callCount} calls over 2 models: ${(submitted / seconds).toFixed(1)} texts/s`)
