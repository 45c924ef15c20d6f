// One piscina worker: loads its own session when the thread starts (piscina preloads the module,
// so the top-level await finishes before the worker takes tasks).
import { threadId } from 'node:worker_threads'

import { move, workerData } from 'piscina'

import { createEmbedder } from '../encoder.mjs'

const embedder = await createEmbedder(workerData, { intraOpNumThreads: 1 })

export default async function embed({ texts, ping }) {
  if (ping) return threadId
  // Hand the vectors' memory over to the main thread instead of copying it.
  return move(await embedder.embed(texts))
}
