// The simplest setup: one onnxruntime-node session with its default options, used from the main
// thread. Tokenizing, pooling and session.run all run there.
import * as ort from 'onnxruntime-node'

import { createEmbedder } from '../encoder.mjs'
import { rows } from '../vectors.mjs'

export async function create(model) {
  const embedder = await createEmbedder(model)
  return {
    describe: `one onnxruntime-node ${ort.env.versions.node} session, default options`,
    embed: async (texts) => rows(await embedder.embed(texts), texts.length),
    close: () => embedder.release(),
  }
}
