// The native call object on its own: a small call is queued on the calling thread and a large one
// on a blocking thread, and either way its answer reaches `result()` whether it arrives before or
// after `result()` is asked for; the answer is given once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import type { BindingCallOptions, BindingPool, BindingPooling } from '../src/binding.cjs'
import { Pool } from '../src/index.js'
import { native } from '../src/native.js'
import { TINY_BERT } from './helpers.js'

const OPTIONS = { priority: 'interactive', countTokens: true } as BindingCallOptions

describe('a native call', () => {
  let pool: Pool
  let binding: BindingPool

  beforeAll(async () => {
    // The public pool loads the runtime library; the binding's own pool then runs beside it.
    pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 1, intraOpThreads: 1 })
    binding = await native().createPool({
      models: [{ name: 'tiny', path: TINY_BERT, pooling: 'mean' as BindingPooling, normalize: true, priority: 0 }],
      preload: [0],
      devices: ['cpu', 'cpu'],
      memoryBudgets: [Infinity, Infinity],
      intraOpThreads: 1,
      maxBatchSize: 8,
      maxBatchTokens: 4096,
      maxQueuedItems: 10_000,
      maxWaitMs: 0,
      cpuFallback: false,
      tolerateDeviceFailures: false,
      waitWhenFull: false,
      switchDelayMs: 0,
    })
  })

  afterAll(async () => {
    await binding?.close(false)
    await pool?.close()
  })

  const rows = (flat: Float32Array, count: number) => {
    const width = flat.length / count
    return Array.from({ length: count }, (_, i) => Array.from(flat.subarray(i * width, (i + 1) * width)))
  }

  it('answers small and large calls alike, with the public pool’s rows', async () => {
    const small = ['a man eats bread', 'a dog runs']
    // Over the size a call is queued inline at: many texts, and one text of several kilobytes.
    const large = [...small, ...Array.from({ length: 30 }, (_, i) => `text number ${i}`), 'long '.repeat(900)]
    const expected = await pool.embed(large)
    for (const texts of [small, large]) {
      const call = binding.embed(0, texts, OPTIONS)
      const got = rows(await call.result(), texts.length)
      expect(call.tokenCounts()?.length).toBe(texts.length)
      got.forEach((row, i) => row.forEach((v, j) => expect(v).toBeCloseTo(expected[i]![j]!, 5)))
    }
  })

  it('keeps an answer that arrives before result() is asked for', async () => {
    const call = binding.embed(0, ['answered early'], OPTIONS)
    const [expected] = await pool.embed(['answered early'])
    // Long enough for the tiny model to have answered.
    await new Promise((resolve) => setTimeout(resolve, 200))
    const [row] = rows(await call.result(), 1)
    row!.forEach((v, j) => expect(v).toBeCloseTo(expected![j]!, 5))
  })

  it('gives its answer once: a second result() throws INTERNAL', async () => {
    const call = binding.embed(0, ['once'], OPTIONS)
    const first = call.result()
    expect(() => call.result()).toThrow(expect.objectContaining({ code: 'INTERNAL' }))
    await expect(first).resolves.toBeInstanceOf(Float32Array)
  })

  it('rejects with ABORTED when cancelled before its answer, inline or not', async () => {
    for (const texts of [['cancelled'], Array.from({ length: 40 }, (_, i) => `cancelled ${i}`)]) {
      const call = binding.embed(0, texts, OPTIONS)
      const decided = call.cancel(false)
      const settled = await call.result().then(
        () => 'resolved',
        (e: { code?: string }) => e.code,
      )
      // A cancel that came after the answer decides nothing, and the call keeps its rows.
      expect(settled).toBe(decided ? 'ABORTED' : 'resolved')
    }
  })
})
