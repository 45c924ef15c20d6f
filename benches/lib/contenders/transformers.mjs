// transformers.js: the feature-extraction pipeline on the main thread, loading the same model
// folder strictly offline. It bundles its own onnxruntime-node, which is why every contender
// runs in a process of its own: two ONNX Runtime versions cannot share one process.
import { basename, dirname } from 'node:path'

import { env, pipeline } from '@huggingface/transformers'

import { rows } from '../vectors.mjs'

export async function create(model) {
  env.allowRemoteModels = false
  env.allowLocalModels = true
  // The model id is the folder's name, resolved against its parent.
  env.localModelPath = dirname(model.folder)
  const extractor = await pipeline('feature-extraction', basename(model.folder), { dtype: 'q4', device: 'cpu' })
  // The folder's tokenizer_config.json says model_max_length 512 (BERT's position limit) while
  // its tokenizer.json truncates at 128, which is what inferpool and the other contenders use.
  // transformers.js only reads model_max_length, so pin it to give every contender the same tokens.
  Object.defineProperty(extractor.tokenizer, 'model_max_length', { value: model.maxLength })
  const ortVersion = env.backends.onnx?.versions?.node ?? 'bundled'
  return {
    describe: `@huggingface/transformers ${env.version}, its own onnxruntime-node ${ortVersion}, default options`,
    embed: async (texts) => {
      const tensor = await extractor(texts, { pooling: 'mean', normalize: true })
      return rows(tensor.data, texts.length)
    },
    close: () => extractor.dispose(),
  }
}
