import { availableParallelism } from 'node:os'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool } from '../src/index.js'
import { HIDDEN, MAX_LENGTH } from './fixtures/tiny-bert.js'
import { TINY_BERT } from './helpers.js'
import { type Reference, cosine, createReference } from './fixtures/reference.js'

const TEXTS = [
  '',
  'a',
  'the man is eating food.',
  'The man is eating a piece of bread!',
  'a dog and a cat',
  'UPPER case and lower case',
  'numbers 12345 and 67890',
  'unknown words: zebra quixotic',
  'ünïcödé àccents',
  '日本語のテキスト',
  'emoji 🎉🚀 here',
  'punctuation!?;:()',
  '   leading and trailing spaces   ',
  'tabs\tand\nnewlines',
  'the '.repeat(100), // truncated at MAX_LENGTH tokens
  'runs and runs and runs and runs',
  'x',
  'the food',
  'bread of the man',
  'cat dog cat dog cat dog cat dog cat dog cat dog',
]

describe('a generated BERT-shaped model', () => {
  let pool: Pool
  let reference: Reference

  beforeAll(async () => {
    pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 2, intraOpThreads: 1, maxBatchSize: 8 })
    reference = await createReference(
      pool.modelPath.endsWith('.onnx') ? pool.modelPath : `${TINY_BERT}/onnx/model.onnx`,
      MAX_LENGTH,
    )
  })
  afterAll(async () => {
    await pool?.close()
    await reference?.release()
  })

  it("runs a lone text over the idle workers' cores, with the same result", async () => {
    const spread = () => pool.status().workers.reduce((sum, w) => sum + w.spreadBatches, 0)
    const before = spread()
    for (const text of TEXTS.slice(2, 10)) {
      const [embedding] = await pool.embed([text])
      expect(cosine(embedding, await reference.embed(text)), text).toBeGreaterThan(0.9999)
    }
    // Two workers of one thread each: a lone session has both threads (with one core there is
    // nothing to spread over).
    if (availableParallelism() >= 2) expect(spread() - before).toBeGreaterThan(0)
  })

  it('reports its dimension and maximum length', () => {
    expect(pool.dimension).toBe(HIDDEN)
    expect(pool.maxLength).toBe(MAX_LENGTH)
  })

  it('matches an independent onnxruntime-node reference, batched and padded', async () => {
    const embeddings = await pool.embed(TEXTS)
    expect(embeddings).toHaveLength(TEXTS.length)
    for (const [i, text] of TEXTS.entries()) {
      const expected = await reference.embed(text)
      expect(embeddings[i]).toHaveLength(HIDDEN)
      expect(cosine(embeddings[i], expected), JSON.stringify(text)).toBeGreaterThan(0.9999)
    }
    expect(reference.tokenCount(TEXTS[14])).toBe(MAX_LENGTH)
  })

  it('gives the same vector alone and in a batch with longer texts', async () => {
    const [alone] = await pool.embed(['a dog'])
    const [inBatch] = await pool.embed(['a dog', 'the man is eating a piece of bread and the cat runs'])
    expect(cosine(alone, inBatch)).toBeGreaterThan(0.99999)
  })

  it('returns unit vectors by default', async () => {
    for (const v of await pool.embed(TEXTS)) expect(Math.hypot(...v)).toBeCloseTo(1, 5)
  })

  it('keeps input order across many concurrent calls', async () => {
    const texts = Array.from({ length: 1000 }, (_, i) => `the man ${i} ${'food '.repeat(i % 7)}`)
    const distinct = [...new Set(texts)]
    const byText = new Map<string, Float32Array>()
    const singles = await pool.embed(distinct)
    distinct.forEach((t, i) => byText.set(t, singles[i]))
    const calls = await Promise.all(Array.from({ length: 50 }, (_, c) => pool.embed(texts.slice(c * 20, c * 20 + 20))))
    const results = calls.flat()
    expect(results).toHaveLength(1000)
    results.forEach((v, i) => expect(cosine(v, byText.get(texts[i])!)).toBeGreaterThan(0.99999))
  })
})

describe('pooling options', () => {
  it('cls pooling and normalize: false change the result', async () => {
    const mean = await Pool.create({ model: TINY_BERT, cpuWorkers: 1 })
    const cls = await Pool.create({ model: TINY_BERT, cpuWorkers: 1, pooling: 'cls', normalize: false })
    try {
      const [m] = await mean.embed(['the man is eating food'])
      const [c] = await cls.embed(['the man is eating food'])
      expect(Math.hypot(...c)).not.toBeCloseTo(1, 2)
      expect(cosine(m, c)).toBeLessThan(0.999)
    } finally {
      await mean.close()
      await cls.close()
    }
  })

  it('honours a shorter maxLength', async () => {
    const pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 1, maxLength: 8 })
    const reference = await createReference(`${TINY_BERT}/onnx/model.onnx`, 8)
    try {
      expect(pool.maxLength).toBe(8)
      const text = 'the man is eating a piece of bread and food'
      const [v] = await pool.embed([text])
      expect(cosine(v, await reference.embed(text))).toBeGreaterThan(0.9999)
    } finally {
      await pool.close()
      await reference.release()
    }
  })
})

describe('status', () => {
  it('counts what was submitted, per worker and in total', async () => {
    const pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 2, maxBatchSize: 8 })
    try {
      const before = pool.status()
      expect(before.workers).toHaveLength(2)
      expect(before.workers.every((w) => w.device === 'cpu' && w.items === 0)).toBe(true)
      const texts = Array.from({ length: 500 }, (_, i) => `the man ${i} ${'food '.repeat(i % 9)}`)
      await Promise.all(Array.from({ length: 10 }, (_, c) => pool.embed(texts.slice(c * 50, c * 50 + 50))))
      const after = pool.status()
      expect(after.items).toBe(500)
      expect(after.outstanding).toBe(0)
      expect(after.queued).toBe(0)
      expect(after.workers.reduce((n, w) => n + w.batches, 0)).toBeGreaterThanOrEqual(500 / 8)
      for (const w of after.workers) {
        expect(w.meanBatchSize).toBeLessThanOrEqual(8)
        expect(w.tokenBudget).toBeGreaterThan(0)
        expect(['idle', 'busy']).toContain(w.state)
      }
      expect(after.runtime.version).toBe('1.29.0')
      expect(after.model.dimension).toBe(pool.dimension)
      await pool.close()
      expect(pool.status().workers.every((w) => w.state === 'stopped')).toBe(true)
    } finally {
      await pool.close()
    }
  })
})
