// The embedding server against the same pool called in-process: a fixed number of requests on
// the loopback interface (autocannon, in a worker thread so that it does not share the server's
// event loop) at a fixed concurrency, single-text and 32-text, then the same calls made
// in-process by as many concurrent callers, on the same pool, in the same run. Reports
// requests/s, texts/s and latency percentiles of both, and the server's throughput ratio and
// added latency.
//
//   npm run build && npm run bench:serve -- [--connections 64] [--rounds 2] [--scale 1]
//                                           [--model default|PATH] [--workers N]
//
// --scale multiplies the request counts (1000 single-text, 128 32-text requests per run).
import { availableParallelism } from 'node:os'
import { parseArgs } from 'node:util'

import autocannon from 'autocannon'

import { Pool } from '../dist/index.js'
import { createServer } from '../dist/server.js'
import { buildCorpus } from './lib/corpus.mjs'
import { machine } from './lib/report.mjs'
import { percentile } from './lib/stats.mjs'

const { values } = parseArgs({
  options: {
    scale: { type: 'string', default: '1' },
    connections: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '2' },
    model: { type: 'string', default: 'default' },
    workers: { type: 'string', default: String(Math.min(availableParallelism(), 4)) },
  },
})
const scale = Number(values.scale)
const connections = Number(values.connections)
const rounds = Number(values.rounds)

const { texts } = buildCorpus(64)
const WORKLOADS = [
  { name: 'single-text requests', texts: [texts[0]], requests: Math.max(64, Math.round(1000 * scale)) },
  { name: '32-text requests', texts: texts.slice(1, 33), requests: Math.max(64, Math.round(128 * scale)) },
]

const pool = await Pool.create({ model: values.model, cpuWorkers: Number(values.workers) })
// Requests of one text are interactive, larger ones bulk: the server's default, mirrored below.
const priority = (count) => (count === 1 ? 'interactive' : 'bulk')
const app = await createServer(pool, { timeoutMs: 600_000 })
const base = await app.listen({ host: '127.0.0.1', port: 0 })

/** `connections` callers, each calling the pool again as soon as its call returns. */
async function inProcess(workload) {
  const latencies = []
  let left = workload.requests
  const caller = async () => {
    while (left > 0) {
      left--
      const started = performance.now()
      await pool.embed(workload.texts, { priority: priority(workload.texts.length) })
      latencies.push(performance.now() - started)
    }
  }
  const started = performance.now()
  await Promise.all(Array.from({ length: connections }, caller))
  const seconds = (performance.now() - started) / 1000
  return { requests: latencies.length / seconds, p50: percentile(latencies, 50), p99: percentile(latencies, 99) }
}

/** `connections` keep-alive connections posting the workload to `/v1/embeddings`. */
async function overHttp(workload) {
  const result = await autocannon({
    url: `${base}/v1/embeddings`,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ input: workload.texts, model: pool.defaultModel, encoding_format: 'base64' }),
    connections,
    amount: workload.requests,
    workers: 1,
    timeout: 600,
  })
  const failed = result.non2xx + result.errors + result.timeouts
  if (failed > 0) throw new Error(`${failed} requests failed (non-2xx ${result.non2xx}, errors ${result.errors})`)
  return { requests: workload.requests / result.duration, p50: result.latency.p50, p99: result.latency.p99 }
}

// Warm up both paths (sessions, JIT, connections) before anything is timed.
for (const workload of WORKLOADS) {
  await Promise.all(Array.from({ length: 8 }, () => pool.embed(workload.texts)))
  await autocannon({
    url: `${base}/v1/embeddings`,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ input: workload.texts }),
    amount: 16,
    connections: 8,
  })
}

const rows = []
const summary = []
for (let round = 1; round <= rounds; round++) {
  for (const workload of WORKLOADS) {
    const local = await inProcess(workload)
    const http = await overHttp(workload)
    for (const [mode, r] of [
      ['in-process pool.embed', local],
      ['HTTP /v1/embeddings', http],
    ]) {
      const cells = [
        r.requests.toFixed(1),
        (r.requests * workload.texts.length).toFixed(1),
        r.p50.toFixed(1),
        r.p99.toFixed(1),
      ]
      rows.push(`| ${workload.name}, round ${round} | ${mode} | ${cells.join(' | ')} |`)
    }
    summary.push(
      `- ${workload.name}, round ${round}: throughput ${(http.requests / local.requests).toFixed(3)}× in-process, ` +
        `p99 ${http.p99 - local.p99 >= 0 ? '+' : ''}${(http.p99 - local.p99).toFixed(1)} ms, ` +
        `p50 ${http.p50 - local.p50 >= 0 ? '+' : ''}${(http.p50 - local.p50).toFixed(1)} ms`,
    )
  }
}
await app.close()
await pool.close()

console.log(
  `\n${machine()}; model ${values.model}, ${values.workers} CPU workers; ${connections} concurrent callers or connections\n`,
)
console.log('| workload | contender | requests/s | texts/s | p50 ms | p99 ms |\n|---|---|---:|---:|---:|---:|')
console.log(rows.join('\n'))
console.log('\nHTTP ÷ in-process:')
console.log(summary.join('\n'))
