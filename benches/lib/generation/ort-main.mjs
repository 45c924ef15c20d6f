// The generation loop a Node user writes by hand today: the model's tokenizer.json in
// @huggingface/tokenizers (pure JS), onnxruntime-node sessions of the Optimum export (the
// encoder and the merged decoder) with their default options, and a greedy loop on the main
// thread that feeds the decoder its own key/value cache, one prompt at a time.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { Tokenizer } from '@huggingface/tokenizers'
import * as ort from 'onnxruntime-node'

const int64 = (values, dims) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), dims)

/**
 * The encoder and merged decoder of the T5 folder `folder` (ONNX files under `onnx/`), with
 * `sessionOptions` (default: onnxruntime-node's own defaults).
 */
export async function createT5Loop(folder, sessionOptions = {}) {
  const read = (file) => JSON.parse(readFileSync(join(folder, file), 'utf8'))
  const config = read('config.json')
  const tokenizer = new Tokenizer(read('tokenizer.json'), read('tokenizer_config.json'))
  const startId = config.decoder_start_token_id ?? config.pad_token_id ?? 0
  const eosId = config.eos_token_id ?? 1
  const layers = config.num_decoder_layers ?? config.num_layers
  const { num_heads: heads, d_kv: dKv } = config
  const encoder = await ort.InferenceSession.create(join(folder, 'onnx', 'encoder_model.onnx'), sessionOptions)
  const decoder = await ort.InferenceSession.create(join(folder, 'onnx', 'decoder_model_merged.onnx'), sessionOptions)

  const pastNames = (part) =>
    Array.from({ length: layers }, (_, l) => [
      `past_key_values.${l}.${part}.key`,
      `past_key_values.${l}.${part}.value`,
    ]).flat()
  const decoderPast = pastNames('decoder')
  const encoderPast = pastNames('encoder')
  const presents = (outputs, names) =>
    Object.fromEntries(names.map((name) => [name, outputs[name.replace('past_key_values', 'present')]]))
  const emptyPast = () =>
    Object.fromEntries(
      [...decoderPast, ...encoderPast].map((name) => [
        name,
        new ort.Tensor('float32', new Float32Array(0), [1, heads, 0, dKv]),
      ]),
    )

  /** The prompt's ids, `</s>` appended. */
  const encode = (prompt) => tokenizer.encode(prompt, { add_special_tokens: true }).ids

  /** One encoder run over `ids` (one row): its hidden states and attention mask. */
  const runEncoder = async (ids) => {
    const mask = int64(
      ids.map(() => 1),
      [1, ids.length],
    )
    const outputs = await encoder.run({ input_ids: int64(ids, [1, ids.length]), attention_mask: mask })
    return { hidden: outputs.last_hidden_state, mask }
  }

  /** The most likely next id at the last position (the lowest id wins a tie). */
  const argmax = (logits) => {
    const [, length, vocab] = logits.dims
    const data = logits.data
    const offset = (length - 1) * vocab
    let best = 0
    for (let i = 1; i < vocab; i++) if (data[offset + i] > data[offset + best]) best = i
    return best
  }

  return {
    encode,
    runEncoder,
    /** Greedy generation; `onToken()` is called as each token is chosen. */
    async generate(prompt, maxNewTokens, onToken) {
      const { hidden, mask } = await runEncoder(encode(prompt))
      const tokens = []
      let past = emptyPast()
      let cross
      for (let step = 0; tokens.length < maxNewTokens; step++) {
        const outputs = await decoder.run({
          input_ids: int64([step === 0 ? startId : tokens.at(-1)], [1, 1]),
          encoder_attention_mask: mask,
          encoder_hidden_states: hidden,
          use_cache_branch: new ort.Tensor('bool', [step > 0], [1]),
          ...past,
        })
        // The cache branch's encoder presents are empty placeholders: keep the first step's.
        cross ??= presents(outputs, encoderPast)
        past = { ...presents(outputs, decoderPast), ...cross }
        const next = argmax(outputs.logits)
        if (next === eosId) break
        tokens.push(next)
        onToken?.()
      }
      return { tokens, text: tokenizer.decode(tokens, { skip_special_tokens: true }) }
    },
    async release() {
      await encoder.release()
      await decoder.release()
    },
  }
}

export async function create({ folder }) {
  const loop = await createT5Loop(folder)
  return {
    describe:
      `onnxruntime-node ${ort.env.versions.node} sessions (encoder + merged decoder), default options, ` +
      'a greedy loop with the key/value cache on the main thread, tokenizer in @huggingface/tokenizers',
    generate: (prompt, maxNewTokens, onToken) => loop.generate(prompt, maxNewTokens, onToken),
    close: () => loop.release(),
  }
}
