/**
 * Generation against an independent decoding loop: the tiny T5 in each Optimum layout, greedy
 * output token for token equal to onnxruntime-node's own loop on the same files, one prompt at
 * a time and 32 at once; streams whose deltas add up to the text; cancelled rows that leave the
 * decoder; an embedding model and a seq2seq model on the same worker.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool, PoolError } from '../src/index.js'
import { type Reference, cosine, createReference } from './fixtures/reference.js'
import {
  type Generation,
  type GenerationReference,
  PROMPTS,
  createGenerationReference,
} from './fixtures/t5-reference.js'
import { type T5Layout, writeTinyT5 } from './fixtures/tiny-t5.js'
import { MAX_LENGTH } from './fixtures/tiny-bert.js'
import { TINY_BERT, code, until } from './helpers.js'

const MAX_NEW_TOKENS = 24
const root = mkdtempSync(join(tmpdir(), 'inferpool-generation-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

const essentials = ({ tokens, text, finishReason }: { tokens: number[]; text: string; finishReason: string }) => ({
  tokens,
  text,
  finishReason,
})

const LAYOUTS: [T5Layout, boolean][] = [
  ['merged', true],
  ['pair', false],
  ['no-past', true],
]

describe.each(LAYOUTS)('generation with the %s layout (files under onnx/: %s)', (layout, onnxDir) => {
  const dir = join(root, `${layout}-${onnxDir}`)
  let pool: Pool
  let reference: GenerationReference
  const expected = new Map<string, Generation>()

  beforeAll(async () => {
    writeTinyT5(dir, { layout, onnxDir })
    reference = await createGenerationReference(dir)
    for (const prompt of PROMPTS)
      expected.set(prompt, await reference.generate(prompt, { maxNewTokens: MAX_NEW_TOKENS }))
    pool = await Pool.create({ models: { t5: { path: dir, kind: 'seq2seq' } }, cpuWorkers: 2, maxBatchSize: 16 })
  }, 60_000)
  afterAll(async () => {
    await pool?.close()
    await reference?.release()
  })

  it('decodes every prompt as the reference loop does, one at a time', async () => {
    for (const prompt of PROMPTS) {
      const [result] = await pool.generate([prompt], { maxNewTokens: MAX_NEW_TOKENS })
      expect(essentials(result), prompt).toEqual(essentials(expected.get(prompt)!))
      expect(result.promptTokens, prompt).toBe(reference.encode(prompt).length)
    }
    // The fixture mixes both endings.
    const reasons = new Set(PROMPTS.map((p) => expected.get(p)!.finishReason))
    expect(reasons).toEqual(new Set(['eos', 'length']))
  })

  it('decodes 32 prompts at once, from one call and from 32 callers, in cohorts', async () => {
    const prompts = PROMPTS.slice(0, 32)
    const together = await pool.generate(prompts, { maxNewTokens: MAX_NEW_TOKENS })
    expect(together.map(essentials)).toEqual(prompts.map((p) => essentials(expected.get(p)!)))
    const apart = await Promise.all(prompts.map((p) => pool.generate([p], { maxNewTokens: MAX_NEW_TOKENS })))
    expect(apart.map(([r]) => essentials(r))).toEqual(prompts.map((p) => essentials(expected.get(p)!)))
    const generation = pool.status().models.t5.generation!
    expect(generation.layout).toBe(layout)
    expect(generation.rows).toBe(0)
    expect(generation.tokens).toBeGreaterThan(0)
    // Fewer decoder steps than tokens: rows were decoded together.
    expect(generation.steps).toBeLessThan(generation.tokens)
  })

  it('streams deltas that add up to the text of a call', async () => {
    for (const prompt of PROMPTS.slice(0, 12)) {
      let text = ''
      const tokens: number[] = []
      let finish: string | null = null
      for await (const delta of pool.generateStream(prompt, { maxNewTokens: MAX_NEW_TOKENS })) {
        expect(finish).toBeNull()
        text += delta.text
        if (delta.token !== null) tokens.push(delta.token)
        finish = delta.finishReason
        expect(delta.promptTokens).toBe(finish === null ? null : reference.encode(prompt).length)
        // Whole characters only: never a lone half of a UTF-8 sequence.
        expect(delta.text).not.toContain('\uFFFD')
      }
      const want = expected.get(prompt)!
      expect({ tokens, text, finishReason: finish }, prompt).toEqual(essentials(want))
    }
  })
})

describe('generation, the rest', () => {
  const dir = join(root, 'endless')
  let pool: Pool

  beforeAll(async () => {
    // Never chooses EOS: every row runs to its limit.
    writeTinyT5(dir, { layout: 'merged', noEos: true })
    pool = await Pool.create({
      models: { t5: { path: dir }, embed: { path: TINY_BERT } },
      defaultModel: 'embed',
      cpuWorkers: 1,
    })
  }, 60_000)
  afterAll(() => pool?.close())

  it('frees the row of a stream left early, and of an aborted call', async () => {
    const rows = () => pool.status().models.t5.generation!.rows
    let seen = 0
    for await (const delta of pool.generateStream(PROMPTS[3], { maxNewTokens: 100_000 })) {
      if (delta.text.length > 0 && ++seen === 3) break
    }
    await until('the stream row left', () => rows() === 0)
    const controller = new AbortController()
    const call = pool.generate([PROMPTS[1], PROMPTS[2]], { maxNewTokens: 100_000, signal: controller.signal })
    await until('both rows decode', () => rows() === 2)
    controller.abort()
    expect(await code(call)).toBe('ABORTED')
    await until('the aborted rows left', () => rows() === 0)
    expect(pool.status().outstanding).toBe(0)
  })

  it('times out, aborts a stream, and lets a draining close finish what decodes', async () => {
    const rows = () => pool.status().models.t5.generation!.rows
    expect(await code(pool.generate([PROMPTS[4]], { maxNewTokens: 100_000, timeoutMs: 50 }))).toBe('TIMEOUT')
    await until('the timed-out row left', () => rows() === 0)
    const controller = new AbortController()
    const stream = pool.generateStream(PROMPTS[6], { maxNewTokens: 100_000, signal: controller.signal })
    const first = await stream.next()
    expect(first.done).toBe(false)
    controller.abort(new Error('enough'))
    const error = await (async () => {
      for await (const delta of stream) void delta
    })().catch((e: unknown) => e)
    expect((error as PoolError).code).toBe('ABORTED')
    await until('the aborted stream row left', () => rows() === 0)

    const other = await Pool.create({ models: { t5: { path: dir } }, cpuWorkers: 1 })
    const running = other.generate([PROMPTS[1], PROMPTS[2]], { maxNewTokens: 40 })
    await until('rows decode', () => other.status().models.t5.generation!.rows === 2)
    await other.close({ drain: true })
    expect((await running).map((r) => r.tokens.length)).toEqual([40, 40])
    expect(await code(other.generate(['x']))).toBe('POOL_CLOSED')
    expect(() => other.generateStream('x')).toThrow(/closed/)
  })

  it('ends texts at a stop sequence, and at maxNewTokens', async () => {
    const [full] = await pool.generate([PROMPTS[5]], { maxNewTokens: 20 })
    expect(full.finishReason).toBe('length')
    expect(full.tokens).toHaveLength(20)
    const stop = full.text.trim().slice(4, 7)
    const [stopped] = await pool.generate([PROMPTS[5]], { maxNewTokens: 20, stop: [stop] })
    expect(stopped.finishReason).toBe('stop')
    expect(stopped.text).toBe(full.text.slice(0, full.text.indexOf(stop)))
    // A stream holds back what may become the stop sequence: it never shows it.
    let streamed = ''
    for await (const delta of pool.generateStream(PROMPTS[5], { maxNewTokens: 20, stop })) {
      streamed += delta.text
      expect(streamed).not.toContain(stop)
      if (delta.finishReason !== null) expect(delta.finishReason).toBe('stop')
    }
    expect(streamed).toBe(stopped.text)
  })

  it('samples reproducibly with a seed', async () => {
    const options = { maxNewTokens: 16, temperature: 1.5, topK: 20, seed: 42 }
    const first = await pool.generate(PROMPTS.slice(0, 4), options)
    const again = await pool.generate(PROMPTS.slice(0, 4), options)
    expect(again).toEqual(first)
    const [greedy] = await pool.generate([PROMPTS[0]], { maxNewTokens: 16 })
    const other = await pool.generate([PROMPTS[0]], { ...options, seed: 7 })
    expect([first[0].tokens, other[0].tokens]).not.toEqual([greedy.tokens, greedy.tokens])
  })

  it('embeds and generates on one worker, each call answered as if alone', async () => {
    const reference: Reference = await createReference(join(TINY_BERT, 'onnx', 'model.onnx'), MAX_LENGTH)
    try {
      const texts = ['the man is eating food.', 'a dog and a cat', 'bread']
      const long = pool.generate([PROMPTS[7]], { maxNewTokens: 300 })
      await until('the long row decodes', () => pool.status().models.t5.generation!.rows === 1)
      const embeddings = await pool.embed(texts)
      // The embedding call was answered while the long row was still decoding.
      expect(pool.status().models.t5.generation!.rows).toBe(1)
      for (const [i, text] of texts.entries()) {
        expect(cosine(embeddings[i], await reference.embed(text))).toBeGreaterThan(0.9999)
      }
      const [generated] = await long
      expect(generated.tokens).toHaveLength(300)
      expect(pool.status().workers[0].loadedModels.sort()).toEqual(['embed', 't5'])
    } finally {
      await reference.release()
    }
  })

  it('refuses the wrong kind of call and bad options clearly', async () => {
    await expect(pool.generate(['x'], { model: 'embed' })).rejects.toThrow(/embedding model/)
    await expect(pool.embed(['x'], { model: 't5' })).rejects.toThrow(/seq2seq model/)
    const bad: [object, RegExp][] = [
      [{ maxNewTokens: 0 }, /maxNewTokens/],
      [{ temperature: -1 }, /temperature/],
      [{ topP: 0 }, /topP/],
      [{ stop: [''] }, /stop/],
      [{ minNewTokens: 9, maxNewTokens: 3 }, /minNewTokens/],
      [{ maxTokens: 3 }, /maxTokens/],
    ]
    for (const [options, message] of bad) {
      const error = await pool.generate(['x'], options as never).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(PoolError)
      expect((error as PoolError).code).toBe('INVALID_INPUT')
      expect((error as PoolError).message).toMatch(message)
    }
    expect(await pool.generate([])).toEqual([])
  })

  it('reports its decoding in status and metrics', async () => {
    const status = pool.status().models
    expect(status.t5.kind).toBe('seq2seq')
    expect(status.embed.kind).toBe('embedding')
    expect(status.embed.generation).toBeNull()
    const generation = status.t5.generation!
    expect(generation.timeToFirstTokenMs.p50).toBeGreaterThan(0)
    expect(generation.timePerTokenMs.p99).toBeGreaterThan(0)
    const metrics = pool.metrics()
    expect(metrics).toMatch(/inferpool_generated_tokens_total\{model="t5"\} [1-9]/)
    expect(metrics).toMatch(/inferpool_time_to_first_token_seconds_count\{model="t5"\} [1-9]/)
  })
})

describe('seq2seq folders that do not fit', () => {
  it('names what is missing', async () => {
    const dir = join(root, 'broken')
    writeTinyT5(dir, { layout: 'merged' })
    rmSync(join(dir, 'onnx', 'decoder_model_merged.onnx'))
    const error = await Pool.create({ models: { t5: { path: dir } }, cpuWorkers: 1 }).catch((e: unknown) => e)
    expect((error as PoolError).code).toBe('MODEL_INVALID')
    expect((error as PoolError).message).toMatch(/decoder_model_merged\.onnx/)
    const embed = await Pool.create({ models: { t5: { path: TINY_BERT, kind: 'seq2seq' } }, cpuWorkers: 1 }).catch(
      (e: unknown) => e,
    )
    expect((embed as PoolError).code).toBe('MODEL_INVALID')
    expect((embed as PoolError).message).toMatch(/encoder_model\.onnx/)
  })
})
