// Where the default model lives: the folder inferpool caches, used by every contender.
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'

import { ensureDefaultModel } from '../../dist/index.js'

export async function defaultModel() {
  const onnx = await ensureDefaultModel() // …/<folder>/onnx/model_q4.onnx
  const folder = dirname(dirname(onnx))
  const tokenizer = join(folder, 'tokenizer.json')
  // inferpool truncates where the model's tokenizer.json does; the peers use the same limit.
  const maxLength = JSON.parse(readFileSync(tokenizer, 'utf8')).truncation?.max_length ?? 128
  return { onnx, folder, tokenizer, maxLength }
}
