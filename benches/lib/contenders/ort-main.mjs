// The simplest setup: one onnxruntime-node session with its default options, used from the main
// thread. Tokenizing, pooling and session.run all run there.
import * as ort from 'onnxruntime-node'

import { createEmbedder } from '../encoder.mjs'
import { rows } from '../vectors.mjs'

export function create(model) {
  return mainThread(model, {}, 'default options')
}

/** One session with `sessionOptions` (described as `settings`), used from the main thread. */
export async function mainThread(model, sessionOptions, settings) {
  const embedder = await createEmbedder(model, sessionOptions)
  return {
    describe: `one onnxruntime-node ${ort.env.versions.node} session, ${settings}`,
    embed: async (texts) => rows(await embedder.embed(texts), texts.length),
    close: () => embedder.release(),
  }
}
