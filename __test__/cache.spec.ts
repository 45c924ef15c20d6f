import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool } from '../src/index.js'
import { MAX_LENGTH } from './fixtures/tiny-bert.js'
import { type Reference, createReference } from './fixtures/reference.js'
import { TINY_BERT, code } from './helpers.js'

const TEXTS = ['', 'a', 'the man is eating food.', 'ünïcödé àccents', 'the '.repeat(100), 'emoji 🎉 here']

/** Texts embedded by the pool's workers so far. */
const ran = (pool: Pool) => pool.status().items

/** A backlog that keeps a one-worker pool of the default model with batches of one busy for a second or so. */
let backlogs = 0
const backlog = (n: number) => {
  backlogs++ // new texts each time: cached ones would not keep the worker busy
  return Array.from({ length: n }, (_, i) => `backlog ${backlogs} text number ${i} of the queue`)
}
/**
 * A text of the last backlog's length (`word` is one token): it queues behind it, where a
 * longer text would go first (bulk texts of one length leave in order, longest first).
 */
const behind = (word: string) => `backlog ${backlogs} text number 1 of the ${word}`

describe('token counts', () => {
  let pool: Pool
  let reference: Reference
  beforeAll(async () => {
    pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 2, maxBatchSize: 4 })
    reference = await createReference(`${TINY_BERT}/onnx/model.onnx`, MAX_LENGTH)
  })
  afterAll(async () => {
    await reference?.release()
    await pool?.close()
  })

  it('embedWithUsage gives each text the token count the model was fed, and the same vectors', async () => {
    const { embeddings, tokenCounts, totalTokens } = await pool.embedWithUsage(TEXTS)
    const expected = TEXTS.map((t) => reference.tokenCount(t))
    expect(Array.from(tokenCounts)).toEqual(expected)
    expect(expected[4]).toBe(MAX_LENGTH) // the long text is counted after truncation
    expect(totalTokens).toBe(expected.reduce((a, b) => a + b, 0))
    const plain = await pool.embed(TEXTS)
    embeddings.forEach((row, i) => expect(Array.from(row)).toEqual(Array.from(plain[i])))
  })

  it('an empty call has no tokens', async () => {
    expect(await pool.embedWithUsage([])).toEqual({ embeddings: [], tokenCounts: new Uint32Array(0), totalTokens: 0 })
  })

  it('checks its options as embed does', async () => {
    const error = await pool.embedWithUsage(['x'], { timeoutMS: 5 } as object).catch((e) => e)
    expect(error.code).toBe('INVALID_INPUT')
    expect(error.message).toContain('timeoutMs')
  })
})

describe('the result cache', () => {
  let pool: Pool
  let plain: Pool
  beforeAll(async () => {
    // The default model, slow enough for a backlog to keep its one worker busy.
    pool = await Pool.create({ cpuWorkers: 1, intraOpThreads: 1, maxBatchSize: 1, cache: { maxEntries: 4 } })
    plain = await Pool.create({ cpuWorkers: 1 })
  })
  afterAll(async () => {
    await pool?.close()
    await plain?.close()
  })

  it('answers repeated texts without running the model, with the same vectors and token counts', async () => {
    const before = pool.status().cache!
    const first = await pool.embedWithUsage(['cache one', 'cache two', 'cache one'])
    let cache = pool.status().cache!
    expect(cache.misses - before.misses).toBe(2)
    expect(cache.hits - before.hits).toBe(1) // the repeat inside the call
    const items = ran(pool)
    const again = await pool.embedWithUsage(['cache two', 'cache one'])
    expect(ran(pool)).toBe(items) // nothing ran
    cache = pool.status().cache!
    expect(cache.hits - before.hits).toBe(3)
    expect(Array.from(again.embeddings[0])).toEqual(Array.from(first.embeddings[1]))
    expect(Array.from(again.embeddings[1])).toEqual(Array.from(first.embeddings[0]))
    expect(Array.from(again.tokenCounts)).toEqual([first.tokenCounts[1], first.tokenCounts[0]])
    // What a pool without a cache computes.
    const [reference] = await plain.embed(['cache one'])
    reference.forEach((x, i) => expect(again.embeddings[1][i]).toBeCloseTo(x, 5))
  })

  it('gives every call its own copy', async () => {
    const [row] = await pool.embed(['mutable'])
    const kept = Array.from(row)
    row.fill(0)
    expect(Array.from((await pool.embed(['mutable']))[0])).toEqual(kept)
  })

  it('keeps at most maxEntries, evicting the least recently used', async () => {
    await pool.embed(['lru 1', 'lru 2', 'lru 3', 'lru 4'])
    await pool.embed(['lru 1']) // used again: lru 2 is now the oldest
    await pool.embed(['lru 5'])
    const cache = pool.status().cache!
    expect(cache.entries).toBe(4)
    expect(cache.maxEntries).toBe(4)
    let items = ran(pool)
    await pool.embed(['lru 1', 'lru 3', 'lru 4', 'lru 5'])
    expect(ran(pool)).toBe(items)
    await pool.embed(['lru 2'])
    expect(ran(pool)).toBe(items + 1)
    items = ran(pool)
    expect(pool.status().cache!.entries).toBe(4)
  })

  it('runs identical texts of concurrent calls once', async () => {
    const before = pool.status().cache!
    const items = ran(pool)
    const results = await Promise.all(Array.from({ length: 5 }, () => pool.embed(['concurrent text', 'other'])))
    expect(ran(pool) - items).toBe(2)
    const cache = pool.status().cache!
    expect(cache.misses - before.misses).toBe(2)
    expect(cache.hits - before.hits).toBe(8)
    for (const [row] of results) expect(Array.from(row)).toEqual(Array.from(results[0][0]))
  })

  it('a call sharing texts with an aborted call runs them itself', async () => {
    const busy = pool.embed(backlog(150))
    await new Promise((resolve) => setTimeout(resolve, 20))
    const text = behind('line')
    const controller = new AbortController()
    const owner = pool.embed([text], { signal: controller.signal })
    const waiter = pool.embed([text])
    controller.abort()
    expect(await code(owner)).toBe('ABORTED')
    const [row] = await waiter
    const [reference] = await plain.embed([text])
    reference.forEach((x, i) => expect(row[i]).toBeCloseTo(x, 5))
    await busy
  })

  it('a waiting call keeps its own timeout', async () => {
    const busy = pool.embed(backlog(150))
    await new Promise((resolve) => setTimeout(resolve, 20))
    const text = behind('list')
    const owner = pool.embed([text])
    const started = performance.now()
    expect(await code(pool.embed([text], { timeoutMs: 20 }))).toBe('TIMEOUT')
    expect(performance.now() - started).toBeLessThan(1000)
    expect(await owner).toHaveLength(1)
    await busy
  })

  it('an interactive call does not wait behind a bulk call running the same text', async () => {
    let bulkDone = false
    const busy = pool.embed(backlog(150)).then((r) => {
      bulkDone = true
      return r
    })
    await new Promise((resolve) => setTimeout(resolve, 20))
    const text = behind('set')
    const queued = pool.embed([text])
    const [row] = await pool.embed([text], { priority: 'interactive' })
    expect(row).toHaveLength(pool.dimension)
    expect(bulkDone).toBe(false)
    await Promise.all([queued, busy])
  })

  it('reports its counters in status() and metrics()', async () => {
    const { hits, misses, entries } = pool.status().cache!
    const metrics = pool.metrics()
    expect(metrics).toContain(`inferpool_cache_hits_total ${hits}\n`)
    expect(metrics).toContain(`inferpool_cache_misses_total ${misses}\n`)
    expect(metrics).toContain(`inferpool_cache_entries ${entries}\n`)
    expect(plain.status().cache).toBeNull()
    expect(plain.metrics()).not.toContain('inferpool_cache_')
  })

  it('checks its options', async () => {
    for (const cache of [{ maxEntries: 0 }, { maxEntries: 1.5 }, { maxEntries: 2 ** 24 + 1 }, 'big', null]) {
      const error = await Pool.create({ model: TINY_BERT, cache: cache as { maxEntries: number } }).catch((e) => e)
      expect(error.code).toBe('INVALID_INPUT')
      expect(error.message).toContain('cache')
    }
    const error = await Pool.create({ model: TINY_BERT, cache: { maxEntrys: 5 } as object }).catch((e) => e)
    expect(error.message).toContain('did you mean "maxEntries"')
  })
})
