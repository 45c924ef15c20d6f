import { monitorEventLoopDelay } from 'node:perf_hooks'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { DEFAULT_MODEL, Pool } from '../src/index.js'
import { type Reference, cosine, createReference } from './fixtures/reference.js'

const LONG = Array.from({ length: 5000 }, (_, i) => ['alpha', 'river', 'stone', 'quietly', 'bright'][i % 5]).join(' ')

const TEXTS = [
  '',
  ' ',
  'A man is eating food.',
  'A man is eating a piece of bread.',
  'The quick brown fox jumps over the lazy dog.',
  'Rust threads run the model while Node.js keeps serving requests.',
  'Ünïcödé façade naïve café résumé',
  '東京は日本の首都です。',
  'Москва — столица России.',
  'مرحبا بالعالم',
  'שלום עולם',
  '🎉🚀🔥 emoji only 😀',
  'Mixed 😀 emoji and text 👍 in one line',
  'Numbers 3.14159 and 2.71828, dates 2026-11-22, prices $19.99',
  'email@example.com https://example.org/path?query=1',
  'camelCaseIdentifiers and snake_case_names',
  'function add(a, b) { return a + b; }',
  'SELECT * FROM users WHERE id = 42;',
  'ALL CAPS SHOUTING TEXT',
  'tabs\tand\nnewlines\r\nmixed',
  '    leading and trailing whitespace    ',
  'a',
  'I',
  '.',
  '?!?!',
  "Don't stop believing; it's what we're doing.",
  'The weather today is sunny with a light breeze.',
  'Stock markets fell sharply after the announcement.',
  'She plays the violin in the city orchestra.',
  'Photosynthesis converts light energy into chemical energy.',
  'The court ruled in favour of the defendant.',
  'Add two cups of flour and stir gently.',
  'The spacecraft entered orbit around Mars.',
  'He forgot his umbrella at the train station.',
  'Neural networks learn representations from data.',
  'The museum opens at nine in the morning.',
  'Children were playing football in the park.',
  'Please restart the server after the update.',
  'The novel explores themes of memory and loss.',
  'Glaciers are retreating faster than expected.',
  'Our team shipped the release on Friday.',
  'Vaccines train the immune system to recognise pathogens.',
  'The cat slept on the warm windowsill.',
  'Interest rates remained unchanged this quarter.',
  'A red bicycle leaned against the fence.',
  'Translation quality improved with more context.',
  'ça va? oui, très bien merci',
  'Größe, Straße, Maß',
  'ελληνικά γράμματα',
  '한국어 문장입니다',
  'word '.repeat(200).trim(),
  LONG,
]

describe('the default model', () => {
  let pool: Pool
  let reference: Reference

  beforeAll(async () => {
    pool = await Pool.create()
    reference = await createReference(pool.modelPath, pool.maxLength)
  })
  afterAll(async () => {
    await pool?.close()
    await reference?.release()
  })

  it('is all-MiniLM-L6-v2 with 384 dimensions', () => {
    expect(pool.dimension).toBe(DEFAULT_MODEL.dimension)
    expect(pool.runtime.version).toMatch(/^1\.29\./)
  })

  it(`matches onnxruntime-node + the model's tokenizer on ${TEXTS.length} varied texts`, async () => {
    expect(TEXTS.length).toBeGreaterThanOrEqual(50)
    expect(LONG.split(' ')).toHaveLength(5000)
    expect(reference.tokenCount(LONG)).toBe(pool.maxLength)
    const embeddings = await pool.embed(TEXTS)
    let worst = 1
    for (const [i, text] of TEXTS.entries()) {
      const c = cosine(embeddings[i], await reference.embed(text))
      worst = Math.min(worst, c)
      expect(c, JSON.stringify(text.slice(0, 60))).toBeGreaterThanOrEqual(0.999)
      expect(Math.hypot(...embeddings[i])).toBeCloseTo(1, 4)
    }
    console.log(`worst cosine against the reference: ${worst.toFixed(6)}`)
  })

  it('puts the reference sentence pair at 0.76', async () => {
    const [a, b] = await pool.embed(['A man is eating food.', 'A man is eating a piece of bread.'])
    expect(cosine(a, b)).toBeCloseTo(0.76, 1)
    expect(Math.abs(cosine(a, b) - 0.76)).toBeLessThanOrEqual(0.02)
  })

  it('preserves order over 1,000 texts', async () => {
    const texts = Array.from({ length: 1000 }, (_, i) => `Item ${i}: ${TEXTS[2 + (i % 48)]}`)
    const probes = [0, 1, 17, 499, 500, 998, 999]
    const all = await pool.embed(texts)
    const alone = await Promise.all(probes.map((i) => pool.embed([texts[i]])))
    probes.forEach((i, k) => expect(cosine(all[i], alone[k][0]), `text ${i}`).toBeGreaterThan(0.9999))
    // Neighbours differ, so a shifted result would be caught.
    expect(cosine(all[0], all[1])).toBeLessThan(0.99)
  })

  it('keeps the event loop responsive while embedding 2,000 texts', async () => {
    const texts = Array.from({ length: 2000 }, (_, i) => `${TEXTS[2 + (i % 48)]} (${i})`)
    const histogram = monitorEventLoopDelay({ resolution: 1 })
    // A timer that must keep firing on time while the pool works.
    let ticks = 0
    const timer = setInterval(() => ticks++, 5)
    histogram.enable()
    const started = performance.now()
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, c) => pool.embed(texts.slice(c * 100, c * 100 + 100))),
    )
    const seconds = (performance.now() - started) / 1000
    histogram.disable()
    clearInterval(timer)
    const p99 = histogram.percentile(99) / 1e6
    const max = histogram.max / 1e6
    console.log(
      `2,000 texts in ${seconds.toFixed(2)} s (${(2000 / seconds).toFixed(0)} items/s); event-loop delay p99 ${p99.toFixed(2)} ms, max ${max.toFixed(2)} ms; ${ticks} timer ticks`,
    )
    expect(results.flat()).toHaveLength(2000)
    expect(p99).toBeLessThan(10)
    expect(ticks).toBeGreaterThan((seconds * 1000) / 5 / 2)
  })
})
