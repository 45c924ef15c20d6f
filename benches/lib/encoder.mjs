// The embedding path a Node user writes by hand today, shared by the piscina workers, the
// main-thread session and the ceiling: the model's tokenizer.json in @huggingface/tokenizers
// (pure JS), onnxruntime-node for the model, mean pooling and L2 normalisation in JS.
import * as ort from 'onnxruntime-node'

import { createTokenize } from './tokenize.mjs'

/** Model inputs for token id lists, right-padded to the longest of them. */
export function toFeeds(session, idLists) {
  const batch = idLists.length
  const length = Math.max(...idLists.map((ids) => ids.length))
  const inputIds = new BigInt64Array(batch * length)
  const mask = new BigInt64Array(batch * length)
  idLists.forEach((ids, b) => {
    for (let t = 0; t < ids.length; t++) {
      inputIds[b * length + t] = BigInt(ids[t])
      mask[b * length + t] = 1n
    }
  })
  const dims = [batch, length]
  const feeds = {
    input_ids: new ort.Tensor('int64', inputIds, dims),
    attention_mask: new ort.Tensor('int64', mask, dims),
  }
  // BERT exports take segment ids; one sentence per row means all zeros.
  if (session.inputNames.includes('token_type_ids')) {
    feeds.token_type_ids = new ort.Tensor('int64', new BigInt64Array(batch * length), dims)
  }
  return feeds
}

/**
 * Mean of each row's real token states (rows are right-padded, so the first `ids.length`),
 * scaled to unit length. Returns one flat Float32Array, row after row.
 */
export function meanPool(states, idLists) {
  const [batch, length, dim] = states.dims
  const data = states.data
  const out = new Float32Array(batch * dim)
  for (let b = 0; b < batch; b++) {
    const row = out.subarray(b * dim, (b + 1) * dim)
    const tokens = idLists[b].length
    for (let t = 0; t < tokens; t++) {
      const offset = (b * length + t) * dim
      for (let h = 0; h < dim; h++) row[h] += data[offset + h]
    }
    let norm = 0
    for (let h = 0; h < dim; h++) norm += row[h] * row[h]
    const scale = 1 / (Math.sqrt(norm) || 1)
    for (let h = 0; h < dim; h++) row[h] *= scale
  }
  return out
}

/**
 * One onnxruntime-node session plus the tokenizer: `embed(texts)` tokenizes, pads the call to
 * its longest text, runs the model once and pools. Everything but `session.run` runs on the
 * calling thread, and onnxruntime-node runs `session.run` on the calling thread too.
 */
export async function createEmbedder({ onnx, tokenizer, maxLength }, sessionOptions = {}) {
  const session = await ort.InferenceSession.create(onnx, sessionOptions)
  const tokenize = createTokenize(tokenizer, maxLength)
  return {
    session,
    tokenize,
    async embed(texts) {
      const idLists = texts.map(tokenize)
      const outputs = await session.run(toFeeds(session, idLists))
      return meanPool(outputs.last_hidden_state ?? outputs[session.outputNames[0]], idLists)
    },
    release: () => session.release(),
  }
}
