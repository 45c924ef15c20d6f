/**
 * The generated T5-shaped fixture and its reference: the three Optimum layouts decode alike, the
 * encoder ignores padding, the outputs mix EOS and length finishes and hold multi-byte characters,
 * and transformers.js (a real consumer of Optimum exports) generates what the reference generates.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

import * as ort from 'onnxruntime-node'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import {
  EOS_ID,
  T5_LAYOUT_FILES,
  T5_SMALL_SIZE,
  TINY_T5_DEFAULTS,
  type T5Layout,
  t5Vocabulary,
  writeTinyT5,
} from './fixtures/tiny-t5.js'
import {
  createGenerationReference,
  detectLayout,
  type Generation,
  type GenerationReference,
  PROMPTS,
} from './fixtures/t5-reference.js'

const MAX_NEW_TOKENS = 24
const LAYOUTS: T5Layout[] = ['merged', 'pair', 'no-past']
const byteId = (byte: number) =>
  t5Vocabulary().findIndex(([piece]) => piece === `<0x${byte.toString(16).toUpperCase()}>`)

/** What must agree between layouts (the margin may differ by rounding). */
const essentials = ({ tokens, text, finishReason }: Generation) => ({ tokens, text, finishReason })

let root: string
const references = new Map<T5Layout, GenerationReference>()
/** Greedy outputs of the merged layout for every prompt, at {@link MAX_NEW_TOKENS}. */
let outputs: Generation[]

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'inferpool-t5-'))
  for (const layout of LAYOUTS) {
    const dir = writeTinyT5(join(root, layout), { layout })
    references.set(layout, await createGenerationReference(dir))
  }
  outputs = []
  for (const prompt of PROMPTS)
    outputs.push(await references.get('merged')!.generate(prompt, { maxNewTokens: MAX_NEW_TOKENS }))
})

afterAll(async () => {
  for (const reference of references.values()) await reference.release()
  rmSync(root, { recursive: true, force: true })
})

describe('tiny T5 fixture', () => {
  it('writes each layout under onnx/ and finds it there', () => {
    for (const layout of LAYOUTS) {
      expect(readdirSync(join(root, layout, 'onnx')).sort()).toEqual([...T5_LAYOUT_FILES[layout]].sort())
      expect(detectLayout(join(root, layout))).toEqual({ onnxDir: join(root, layout, 'onnx'), layout })
      expect(references.get(layout)!.layout).toBe(layout)
    }
    const config = JSON.parse(readFileSync(join(root, 'merged', 'config.json'), 'utf8'))
    expect(config).toMatchObject({ model_type: 't5', d_model: 16, num_heads: 2, d_kv: 8, num_decoder_layers: 2 })
    expect(config.vocab_size).toBe(t5Vocabulary().length)
  })

  it("declares Optimum's inputs and outputs in each file", async () => {
    const names = async (layout: T5Layout, file: string) => {
      const session = await ort.InferenceSession.create(join(root, layout, 'onnx', file))
      const result = { inputs: [...session.inputNames], outputs: [...session.outputNames] }
      await session.release()
      return result
    }
    const cache = (prefix: string, parts: string[]) =>
      [0, 1].flatMap((l) => parts.flatMap((part) => [`${prefix}.${l}.${part}.key`, `${prefix}.${l}.${part}.value`]))
    const both = ['decoder', 'encoder']
    expect(await names('merged', 'encoder_model.onnx')).toEqual({
      inputs: ['input_ids', 'attention_mask'],
      outputs: ['last_hidden_state'],
    })
    expect(await names('merged', 'decoder_model_merged.onnx')).toEqual({
      inputs: [
        'encoder_attention_mask',
        'input_ids',
        'encoder_hidden_states',
        ...cache('past_key_values', both),
        'use_cache_branch',
      ],
      outputs: ['logits', ...cache('present', both)],
    })
    const decoder = {
      inputs: ['encoder_attention_mask', 'input_ids', 'encoder_hidden_states'],
      outputs: ['logits', ...cache('present', both)],
    }
    expect(await names('pair', 'decoder_model.onnx')).toEqual(decoder)
    expect(await names('no-past', 'decoder_model.onnx')).toEqual(decoder)
    expect(await names('pair', 'decoder_with_past_model.onnx')).toEqual({
      inputs: ['encoder_attention_mask', 'input_ids', ...cache('past_key_values', both)],
      outputs: ['logits', ...cache('present', ['decoder'])],
    })
  })

  it('writes the same bytes for the same seed', () => {
    const again = writeTinyT5(join(root, 'again'))
    const hash = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex')
    for (const file of ['onnx/encoder_model.onnx', 'onnx/decoder_model_merged.onnx', 'tokenizer.json']) {
      expect(hash(join(again, file))).toBe(hash(join(root, 'merged', file)))
    }
  })

  it('gives the same greedy tokens in all three layouts', async () => {
    for (const layout of ['pair', 'no-past'] as const) {
      for (const [i, prompt] of PROMPTS.entries()) {
        const output = await references.get(layout)!.generate(prompt, { maxNewTokens: MAX_NEW_TOKENS })
        expect(essentials(output), prompt).toEqual(essentials(outputs[i]))
      }
    }
  })

  it('loads from the folder root as from onnx/', async () => {
    for (const layout of ['merged', 'pair'] as const) {
      const dir = writeTinyT5(join(root, `${layout}-flat`), { layout, onnxDir: false })
      expect(detectLayout(dir)).toEqual({ onnxDir: dir, layout })
      const reference = await createGenerationReference(dir)
      for (const i of [0, 3, 4]) {
        const output = await reference.generate(PROMPTS[i], { maxNewTokens: MAX_NEW_TOKENS })
        expect(essentials(output)).toEqual(essentials(outputs[i]))
      }
      await reference.release()
    }
  })

  it('encodes a prompt alike alone and in a padded batch', async () => {
    const session = await ort.InferenceSession.create(join(root, 'merged', 'onnx', 'encoder_model.onnx'), {
      intraOpNumThreads: 1,
    })
    const reference = references.get('merged')!
    const short = reference.encode('café')
    const long = reference.encode(PROMPTS[4])
    const run = async (rows: number[][]) => {
      const width = Math.max(...rows.map((r) => r.length))
      const ids = rows.flatMap((r) => [...r, ...Array(width - r.length).fill(0)])
      const mask = rows.flatMap((r) => [...r.map(() => 1), ...Array(width - r.length).fill(0)])
      const tensor = (values: number[]) =>
        new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), [rows.length, width])
      const out = (await session.run({ input_ids: tensor(ids), attention_mask: tensor(mask) })).last_hidden_state
      return { data: out.data as Float32Array, width, hidden: out.dims[2] }
    }
    const alone = await run([short])
    const batch = await run([long, short])
    expect(batch.width).toBeGreaterThan(short.length + 10)
    const row = 1 * batch.width * batch.hidden
    for (let i = 0; i < short.length * alone.hidden; i++) {
      expect(Math.abs(batch.data[row + i] - alone.data[i])).toBeLessThan(1e-5)
    }
    await session.release()
  })

  it('ends some outputs with EOS and runs the others to the limit', () => {
    const eos = outputs.filter((o) => o.finishReason === 'eos')
    const length = outputs.filter((o) => o.finishReason === 'length')
    expect(eos.length / outputs.length).toBeGreaterThanOrEqual(0.2)
    expect(eos.length / outputs.length).toBeLessThanOrEqual(0.5)
    for (const o of eos) expect(o.tokens.length).toBeLessThan(MAX_NEW_TOKENS)
    for (const o of length) expect(o.tokens).toHaveLength(MAX_NEW_TOKENS)
    for (const o of outputs) expect(o.tokens).not.toContain(EOS_ID)
    // Far from a tie: rounding differences elsewhere do not change these outputs.
    expect(Math.min(...outputs.map((o) => o.minMargin))).toBeGreaterThan(1e-4)
  })

  it('generates multi-byte characters split over byte tokens, and never a broken one', () => {
    const withE = outputs.filter((o) => o.text.includes('é'))
    const withEuro = outputs.filter((o) => o.text.includes('€'))
    expect(withE.length).toBeGreaterThanOrEqual(2)
    expect(withEuro.length).toBeGreaterThanOrEqual(2)
    const [c3, a9, e2, x82, ac] = [0xc3, 0xa9, 0xe2, 0x82, 0xac].map(byteId)
    const contains = (tokens: number[], run: number[]) =>
      tokens.some((_, i) => run.every((id, j) => tokens[i + j] === id))
    for (const o of withE) expect(contains(o.tokens, [c3, a9])).toBe(true)
    for (const o of withEuro) expect(contains(o.tokens, [e2, x82, ac])).toBe(true)
    for (const o of outputs) expect(o.text).not.toContain('\uFFFD')
  })

  it('falls back to bytes for characters outside the vocabulary', () => {
    const reference = references.get('merged')!
    const ids = reference.encode('café €')
    expect(ids.join()).toContain([0xc3, 0xa9].map(byteId).join())
    expect(ids.slice(-4)).toEqual([...[0xe2, 0x82, 0xac].map(byteId), EOS_ID])
    expect(ids).not.toContain(2)
  })

  it('holds EOS back until minNewTokens', async () => {
    const i = outputs.findIndex((o) => o.finishReason === 'eos' && o.tokens.length < 10)
    const reference = references.get('merged')!
    const late = await reference.generate(PROMPTS[i], { maxNewTokens: MAX_NEW_TOKENS, minNewTokens: 10 })
    expect(late.tokens.length).toBeGreaterThanOrEqual(10)
    expect(late.tokens.slice(0, outputs[i].tokens.length)).toEqual(outputs[i].tokens)
    const none = await reference.generate(PROMPTS[i], { maxNewTokens: 0 })
    expect(none).toMatchObject({ tokens: [], text: '', finishReason: 'length' })
  })

  it("returns empty placeholders for the encoder presents of the merged model's cache branch", async () => {
    const session = await ort.InferenceSession.create(join(root, 'merged', 'onnx', 'decoder_model_merged.onnx'))
    const { heads, dKv, layers, dModel } = TINY_T5_DEFAULTS
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from([5n]), [1, 1]),
      encoder_attention_mask: new ort.Tensor('int64', BigInt64Array.from([1n, 1n, 1n]), [1, 3]),
      encoder_hidden_states: new ort.Tensor('float32', new Float32Array(3 * dModel), [1, 3, dModel]),
      use_cache_branch: new ort.Tensor('bool', [true], [1]),
    }
    for (let l = 0; l < layers; l++) {
      for (const kv of ['key', 'value']) {
        feeds[`past_key_values.${l}.decoder.${kv}`] = new ort.Tensor('float32', new Float32Array(2 * heads * dKv), [
          1,
          heads,
          2,
          dKv,
        ])
        feeds[`past_key_values.${l}.encoder.${kv}`] = new ort.Tensor('float32', new Float32Array(3 * heads * dKv), [
          1,
          heads,
          3,
          dKv,
        ])
      }
    }
    const out = await session.run(feeds)
    expect(out.logits.dims).toEqual([1, 1, t5Vocabulary().length])
    expect(out['present.0.decoder.key'].dims).toEqual([1, heads, 3, dKv])
    expect(out['present.0.encoder.key'].dims).toEqual([0, heads, 1, dKv])
    await session.release()
  })

  it('never ends with EOS under noEos, and sizes the logits by vocab', async () => {
    const dir = writeTinyT5(join(root, 'no-eos'), { noEos: true, vocab: 1000 })
    const reference = await createGenerationReference(dir)
    for (const prompt of PROMPTS.slice(0, 5)) {
      const o = await reference.generate(prompt, { maxNewTokens: 12 })
      expect(o.finishReason).toBe('length')
      expect(o.tokens).toHaveLength(12)
    }
    await reference.release()
    const tokenizer = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'))
    expect(tokenizer.model.vocab).toHaveLength(1000)
  })

  it('writes a t5-small-size model in well under a minute', () => {
    const dir = join(root, 't5-small')
    const start = performance.now()
    writeTinyT5(dir, { ...T5_SMALL_SIZE, noEos: true })
    const seconds = (performance.now() - start) / 1000
    const sizes = readdirSync(join(dir, 'onnx')).map(
      (f) => `${f} ${(statSync(join(dir, 'onnx', f)).size / 1e6).toFixed(0)} MB`,
    )
    console.log(`t5-small-size fixture written in ${seconds.toFixed(1)} s: ${sizes.join(', ')}`)
    expect(seconds).toBeLessThan(60)
    rmSync(dir, { recursive: true, force: true })
  })

  // transformers.js bundles another onnxruntime-node, which cannot load in a process that has
  // loaded this one (the two libonnxruntime.so.1 clash): it runs in a child process.
  it.skipIf(process.env.INFERPOOL_SKIP_TRANSFORMERS_JS === '1')(
    'generates what transformers.js generates from the merged layout',
    async () => {
      const prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[4]]
      const script = `
        const { pipeline, env } = await import('@huggingface/transformers')
        env.allowRemoteModels = false
        env.localModelPath = process.env.T5_ROOT
        const generator = await pipeline('text2text-generation', 'merged', {
          dtype: 'fp32',
          local_files_only: true,
        })
        // What it feeds the merged decoder on its first two steps.
        const session = generator.model.sessions.decoder_model_merged
        const run = session.run.bind(session)
        const feeds = []
        const describe = ([name, t]) => [
          name,
          { type: t.type, dims: t.dims, ...(t.type === 'bool' ? { value: Array.from(t.data) } : {}) },
        ]
        session.run = (inputs, ...rest) => {
          if (feeds.length < 2) feeds.push(Object.fromEntries(Object.entries(inputs).map(describe)))
          return run(inputs, ...rest)
        }
        const options = { max_new_tokens: ${MAX_NEW_TOKENS}, do_sample: false }
        const results = []
        for (const prompt of JSON.parse(process.env.T5_PROMPTS)) {
          const [{ generated_text }] = await generator(prompt, options)
          const ids = await generator.model.generate({ ...generator.tokenizer(prompt), ...options })
          results.push({ text: generated_text, ids: Array.from(ids.data, Number) })
        }
        console.log(JSON.stringify({ results, feeds }))
      `
      const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
        cwd: join(import.meta.dirname, '..'),
        env: { ...process.env, T5_ROOT: root, T5_PROMPTS: JSON.stringify(prompts) },
      })
      const { results, feeds } = JSON.parse(stdout.trim().split('\n').pop()!)
      prompts.forEach((prompt, i) => {
        const expected = outputs[PROMPTS.indexOf(prompt)]
        const ids: number[] = results[i].ids
        expect(ids[0]).toBe(0)
        expect(ids.slice(1).filter((id) => id !== EOS_ID)).toEqual(expected.tokens)
        expect(ids.at(-1) === EOS_ID).toBe(expected.finishReason === 'eos')
        expect(results[i].text).toBe(expected.text)
      })
      // The first step takes the no-cache branch with empty caches; later steps take the cache.
      const { heads, dKv } = TINY_T5_DEFAULTS
      expect(feeds[0].use_cache_branch).toEqual({ type: 'bool', dims: [1], value: [0] })
      expect(feeds[1].use_cache_branch).toEqual({ type: 'bool', dims: [1], value: [1] })
      expect(feeds[0]['past_key_values.0.decoder.key'].dims).toEqual([1, heads, 0, dKv])
      expect(feeds[0]['past_key_values.0.encoder.key'].dims).toEqual([1, heads, 0, dKv])
      expect(feeds[1]['past_key_values.0.decoder.key'].dims).toEqual([1, heads, 1, dKv])
      expect(feeds[1]['past_key_values.0.encoder.key'].dims[2]).toBeGreaterThan(0)
    },
  )
})
