// The usual way to keep inference off the event loop in Node today: a piscina pool of worker
// threads, one onnxruntime-node session each (1 intra-op thread, so the threads do not fight over
// cores), tokenizing and pooling in the worker. Each call is one task, padded to its longest text.
import { createRequire } from 'node:module'
import { availableParallelism } from 'node:os'

import { Piscina, version } from 'piscina'

import { rows } from '../vectors.mjs'

// Only the workers load ONNX Runtime; the main thread just reports its version.
const ortVersion = createRequire(import.meta.url)('onnxruntime-node/package.json').version

export async function create(model) {
  const threads = availableParallelism()
  const pool = new Piscina({
    filename: new URL('./piscina-worker.mjs', import.meta.url).href,
    minThreads: threads,
    maxThreads: threads,
    // Keep the workers (and their loaded sessions) between bursts of calls.
    idleTimeout: Infinity,
    workerData: model,
  })
  // Each worker loads its session while piscina starts it; wait until all of them answered.
  await waitForThreads(pool, threads)
  return {
    describe: `piscina ${version}, ${threads} worker threads × onnxruntime-node ${ortVersion} (1 intra-op thread)`,
    embed: async (texts) => rows(await pool.run({ texts }), texts.length),
    close: () => pool.destroy(),
  }
}

async function waitForThreads(pool, threads) {
  const seen = new Set()
  for (let round = 0; round < 50 && seen.size < threads; round++) {
    const ids = await Promise.all(Array.from({ length: threads * 2 }, () => pool.run({ ping: true })))
    for (const id of ids) seen.add(id)
  }
}
