// The way a Node user runs the model on a GPU today: one onnxruntime-node session with its CUDA
// execution provider (device 0), used from the main thread, one session.run per request, with the
// tokenizing and pooling of benches/lib/encoder.mjs. INFERPOOL_GPU_PEER_PROVIDER=cpu gives the
// same session on the CPU provider, so that the dry run exercises this path too. Loaded by
// benches/lib/child.mjs, in a process of its own.
import { execFileSync } from 'node:child_process'

import * as ort from 'onnxruntime-node'

import { createEmbedder } from '../lib/encoder.mjs'
import { rows } from '../lib/vectors.mjs'

export async function create(model) {
  const cuda = process.env.INFERPOOL_GPU_PEER_PROVIDER !== 'cpu'
  // onnxruntime-node throws when the CUDA provider cannot be registered; it does not fall back.
  const embedder = await createEmbedder(model, {
    executionProviders: [cuda ? { name: 'cuda', deviceId: 0 } : 'cpu'],
  })
  const provider = cuda ? `CUDA provider on device 0 (${gpuMemory()})` : 'CPU provider'
  return {
    describe: `one onnxruntime-node ${ort.env.versions.node} session, ${provider}, on the main thread`,
    embed: async (texts) => rows(await embedder.embed(texts), texts.length),
    close: () => embedder.release(),
  }
}

/** What nvidia-smi says this process holds on the GPU: evidence that the session runs there. */
function gpuMemory() {
  try {
    const out = execFileSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    })
    const mine = out
      .split('\n')
      .map((line) => line.split(',').map((cell) => cell.trim()))
      .find(([pid]) => Number(pid) === process.pid)
    return mine ? `its process holds ${mine[1]} MiB of GPU memory` : 'nvidia-smi does not list its process'
  } catch {
    return 'nvidia-smi could not be asked'
  }
}
