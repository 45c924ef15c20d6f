import { createReadStream, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { Readable } from 'node:stream'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool, PoolError, type StreamItem } from '../src/index.js'
import { cosine } from './fixtures/reference.js'
import { TINY_BERT } from './helpers.js'

const text = (i: number) => `the man ${i} is eating ${'food '.repeat(i % 5)}`

async function collect(stream: AsyncIterable<StreamItem>): Promise<StreamItem[]> {
  const out: StreamItem[] = []
  for await (const item of stream) out.push(item)
  return out
}

describe('embedStream', () => {
  let pool: Pool
  beforeAll(async () => {
    pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 2, maxBatchSize: 8 })
  })
  afterAll(() => pool?.close())

  it('yields every text in source order with the same vectors as embed', async () => {
    const texts = Array.from({ length: 1000 }, (_, i) => text(i))
    const items = await collect(pool.embedStream(texts, { highWaterMark: 64 }))
    expect(items.map((i) => i.index)).toEqual(texts.map((_, i) => i))
    const direct = await pool.embed(texts)
    items.forEach((item, i) => expect(cosine(item.embedding, direct[i])).toBeGreaterThan(0.99999))
  })

  it('never reads further ahead of the consumer than highWaterMark', async () => {
    let reads = 0
    function* source() {
      for (let i = 0; i < 10_000; i++) {
        reads++
        yield text(i)
      }
    }
    let taken = 0
    let worst = 0
    for await (const item of pool.embedStream(source(), { highWaterMark: 50, chunkSize: 10 })) {
      taken++
      worst = Math.max(worst, reads - taken)
      expect(item.index).toBe(taken - 1)
      if (taken % 100 === 0) await new Promise((resolve) => setTimeout(resolve, 5)) // a slow consumer
    }
    expect(taken).toBe(10_000)
    expect(worst).toBeLessThanOrEqual(50)
  })

  it('stops reading and cancels the rest when the consumer breaks out', async () => {
    let reads = 0
    let closed = false
    function* source() {
      try {
        for (let i = 0; ; i++) {
          reads++
          yield text(i)
        }
      } finally {
        closed = true
      }
    }
    let taken = 0
    for await (const item of pool.embedStream(source(), { highWaterMark: 40 })) {
      expect(item.embedding).toHaveLength(pool.dimension)
      if (++taken === 5) break
    }
    expect(closed).toBe(true)
    expect(reads).toBeLessThanOrEqual(5 + 40)
    // The pool is unaffected.
    expect(await pool.embed(['a dog'])).toHaveLength(1)
  })

  it('reads a file line by line through readline', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'inferpool-stream-')), 'lines.txt')
    writeFileSync(file, Array.from({ length: 300 }, (_, i) => text(i)).join('\n'))
    const lines = createInterface({ input: createReadStream(file), crlfDelay: Infinity })
    const items = await collect(pool.embedStream(lines, { highWaterMark: 32 }))
    expect(items).toHaveLength(300)
    expect(items[299].index).toBe(299)
  })

  it('takes a stream.Readable of strings', async () => {
    const items = await collect(pool.embedStream(Readable.from(['a dog', 'a cat', 'the man'])))
    expect(items.map((i) => i.index)).toEqual([0, 1, 2])
  })

  it('rejects a source that yields something other than a string', async () => {
    const error = await collect(pool.embedStream(['ok', 7 as unknown as string])).catch((e) => e)
    expect(error).toBeInstanceOf(PoolError)
    expect(error.code).toBe('INVALID_INPUT')
    expect(error.message).toContain('index 1')
  })

  it('stops with ABORTED when its signal aborts', async () => {
    const controller = new AbortController()
    let taken = 0
    const error = await (async () => {
      for await (const _ of pool.embedStream(
        (function* () {
          for (let i = 0; ; i++) yield text(i)
        })(),
        { signal: controller.signal },
      )) {
        if (++taken === 3) controller.abort()
      }
    })().catch((e) => e)
    expect(error.code).toBe('ABORTED')
  })
})

describe('onProgress', () => {
  it('reports growing progress and ends at the total', async () => {
    const pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 2 })
    try {
      const texts = Array.from({ length: 1000 }, (_, i) => text(i))
      const reports: { done: number; total: number; itemsPerSecond: number }[] = []
      const result = await pool.embed(texts, { onProgress: (p) => reports.push(p) })
      expect(result).toHaveLength(1000)
      expect(reports.length).toBe(Math.ceil(1000 / 256))
      expect(reports.map((r) => r.done)).toEqual(reports.map((r) => r.done).toSorted((a, b) => a - b))
      expect(reports.at(-1)).toMatchObject({ done: 1000, total: 1000 })
      expect(reports.at(-1)!.itemsPerSecond).toBeGreaterThan(0)
      const direct = await pool.embed(texts)
      result.forEach((v, i) => expect(cosine(v, direct[i])).toBeGreaterThan(0.99999))
    } finally {
      await pool.close()
    }
  })
})
