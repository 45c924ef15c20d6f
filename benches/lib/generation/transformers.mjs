// transformers.js: the text2text-generation pipeline on the same folder, strictly offline, fp32,
// greedy, one prompt at a time on the main thread. It bundles its own onnxruntime-node, which
// cannot share a process with the project's: this runs in a process of its own (generate.mjs).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'

import { BaseStreamer, env, pipeline } from '@huggingface/transformers'

/** Hands every generated token to `onToken` and keeps its id (the first `put` is the decoder start). */
class TokenStreamer extends BaseStreamer {
  constructor(onToken) {
    super()
    this.onToken = onToken
    this.tokens = []
    this.started = false
  }

  put(value) {
    if (!this.started) {
      this.started = true
      return
    }
    for (const [id] of value) {
      this.tokens.push(Number(id))
      this.onToken?.()
    }
  }

  end() {}
}

export async function create({ folder }) {
  env.allowRemoteModels = false
  env.allowLocalModels = true
  // The model id is the folder's name, resolved against its parent.
  env.localModelPath = dirname(folder)
  // Nothing is downloaded; keep any cache out of node_modules all the same.
  env.useFSCache = false
  const cacheDir = mkdtempSync(join(tmpdir(), 'inferpool-bench-transformers-'))
  env.cacheDir = cacheDir
  const generator = await pipeline('text2text-generation', basename(folder), {
    dtype: 'fp32',
    device: 'cpu',
    local_files_only: true,
  })
  const ortVersion = env.backends.onnx?.versions?.node ?? 'bundled'
  return {
    describe: `@huggingface/transformers ${env.version} text2text-generation pipeline, its own onnxruntime-node ${ortVersion}, fp32, default options`,
    async generate(prompt, maxNewTokens, onToken) {
      const streamer = new TokenStreamer(onToken)
      const [{ generated_text: text }] = await generator(prompt, {
        max_new_tokens: maxNewTokens,
        do_sample: false,
        streamer,
      })
      return { tokens: streamer.tokens, text }
    },
    async close() {
      await generator.dispose()
      rmSync(cacheDir, { recursive: true, force: true })
    },
  }
}
