// What one onnxruntime-node session (default options) can do at best on this machine: the texts
// tokenized ahead of time, sorted by length (so batches carry almost no padding), batches of 16,
// and only session.run on the clock: no tokenizing, pooling or scheduling. It bounds a single
// session, not a pool of several sessions, which may split the cores differently.
import * as ort from 'onnxruntime-node'

import { createEmbedder, toFeeds } from './encoder.mjs'

const BATCH = 16

export async function measureCeiling(model, texts) {
  const { session, tokenize, release } = await createEmbedder(model)
  const idLists = texts.map(tokenize).sort((a, b) => a.length - b.length)
  const batches = Array.from({ length: Math.ceil(idLists.length / BATCH) }, (_, b) =>
    toFeeds(session, idLists.slice(b * BATCH, (b + 1) * BATCH)),
  )
  // Warm up on the shortest and the longest batch.
  await session.run(batches[0])
  await session.run(batches.at(-1))
  let runMs = 0
  for (const feeds of batches) {
    const started = performance.now()
    await session.run(feeds)
    runMs += performance.now() - started
  }
  await release()
  return {
    describe: `one onnxruntime-node ${ort.env.versions.node} session, default options, session.run only`,
    items: texts.length,
    itemsPerSecond: texts.length / (runMs / 1000),
  }
}
