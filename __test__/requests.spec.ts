import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool } from '../src/index.js'
import { code, until } from './helpers.js'

// The default model on one worker thread with batches of 1: a backlog of a few hundred texts
// keeps it busy long enough to see queueing, priorities, aborts and timeouts.

const backlog = (n: number, tag: string) =>
  Array.from({ length: n }, (_, i) => `${tag} ${i}: a sentence long enough to take a moment to embed.`)

/**
 * Starts embedding `texts` and resolves (with the call's promise) once the first of them has run:
 * all of them are queued by then (a call's texts are admitted together), ahead of later calls.
 */
async function running(pool: Pool, texts: string[]): Promise<{ done: Promise<Float32Array[]> }> {
  const before = pool.status().items
  const done = pool.embed(texts)
  await until('the first text has run', () => pool.status().items > before)
  return { done }
}

describe('per-call options', () => {
  let pool: Pool
  beforeAll(async () => {
    pool = await Pool.create({ cpuWorkers: 1, maxBatchSize: 1, maxQueuedItems: 1000 })
  })
  afterAll(() => pool?.close())

  it('rejects an already aborted signal at once', async () => {
    const controller = new AbortController()
    controller.abort(new Error('user left'))
    const error = await pool.embed(['x'], { signal: controller.signal }).catch((e) => e)
    expect(error.code).toBe('ABORTED')
    expect(error.message).toContain('user left')
  })

  it('aborts a queued call and the backlog still completes', async () => {
    const { done: bulk } = await running(pool, backlog(200, 'bulk'))
    const controller = new AbortController()
    const started = performance.now()
    // Texts of the backlog's own length queue behind it (bulk items of one length leave in order).
    const victim = pool.embed(backlog(3, 'bulk'), { signal: controller.signal })
    setTimeout(() => controller.abort(), 20)
    expect(await code(victim)).toBe('ABORTED')
    expect(performance.now() - started).toBeLessThan(1000)
    expect(await bulk).toHaveLength(200)
  })

  it('times out a call stuck behind a backlog', async () => {
    const { done: bulk } = await running(pool, backlog(200, 'bulk'))
    const started = performance.now()
    const late = pool.embed(backlog(1, 'bulk'), { timeoutMs: 30 })
    expect(await code(late)).toBe('TIMEOUT')
    expect(performance.now() - started).toBeLessThan(1000)
    expect(await bulk).toHaveLength(200)
  })

  it('serves interactive calls before a bulk backlog', async () => {
    let bulkDone = false
    const { done } = await running(pool, backlog(300, 'bulk'))
    const bulk = done.then((r) => {
      bulkDone = true
      return r
    })
    const [v] = await pool.embed(['urgent question'], { priority: 'interactive' })
    expect(v).toHaveLength(pool.dimension)
    expect(bulkDone).toBe(false)
    expect(await bulk).toHaveLength(300)
  })

  it('rejects a call that would exceed maxQueuedItems at once', async () => {
    const bulk = pool.embed(backlog(900, 'bulk'))
    await until('the backlog is queued', () => pool.status().outstanding > 0)
    expect(await code(pool.embed(backlog(200, 'extra')))).toBe('OVERLOADED')
    // The pool is still usable and the backlog completes.
    expect(await bulk).toHaveLength(900)
    expect(await pool.embed(['after'])).toHaveLength(1)
  })

  it('validates the options', async () => {
    expect(await code(pool.embed(['x'], { priority: 'urgent' as 'bulk' }))).toBe('INVALID_INPUT')
    expect(await code(pool.embed(['x'], { timeoutMs: -1 }))).toBe('INVALID_INPUT')
    expect(await code(pool.embed(['x'], { signal: {} as AbortSignal }))).toBe('INVALID_INPUT')
  })
})

describe("whenFull: 'wait'", () => {
  let pool: Pool
  beforeAll(async () => {
    pool = await Pool.create({ cpuWorkers: 1, maxBatchSize: 4, maxQueuedItems: 40, whenFull: 'wait' })
  })
  afterAll(() => pool?.close())

  it('holds calls beyond maxQueuedItems until they fit, and answers each correctly', async () => {
    const calls = Array.from({ length: 12 }, (_, c) => backlog(20, `call ${c}`))
    const results = await Promise.all(calls.map((texts) => pool.embed(texts)))
    // Each answer is that call's own: compare a sample against the same texts embedded alone.
    for (const c of [0, 7, 11]) {
      const alone = await pool.embed([calls[c][3]])
      expect(results[c]).toHaveLength(20)
      expect(Array.from(results[c][3])).toEqual(Array.from(alone[0]))
    }
    expect(pool.status().outstanding).toBe(0)
  })

  it('rejects a call larger than maxQueuedItems at once', async () => {
    expect(await code(pool.embed(backlog(41, 'huge')))).toBe('OVERLOADED')
  })

  it('times out and aborts calls while they wait for room', async () => {
    // Long texts: the backlog takes a while, and room comes back only when it finishes.
    const full = pool.embed(backlog(40, 'full').map((t) => t.repeat(4)))
    await until('the backlog fills the queue', () => pool.status().outstanding >= 30)
    const late = pool.embed(['waits'], { timeoutMs: 40 })
    const controller = new AbortController()
    const leaving = pool.embed(['leaves'], { signal: controller.signal })
    setTimeout(() => controller.abort(new Error('gone')), 20)
    expect(await code(leaving)).toBe('ABORTED')
    expect(await code(late)).toBe('TIMEOUT')
    expect(await full).toHaveLength(40)
  })

  it('a draining close lets waiting calls finish', async () => {
    const other = await Pool.create({ cpuWorkers: 1, maxBatchSize: 4, maxQueuedItems: 10, whenFull: 'wait' })
    const calls = Array.from({ length: 5 }, (_, c) => other.embed(backlog(8, `drain ${c}`)))
    await until('calls wait for room', () => other.status().waiting > 0)
    await other.close({ drain: true })
    for (const result of await Promise.all(calls)) expect(result).toHaveLength(8)
  })

  it('a cancelling close rejects waiting calls with POOL_CLOSED', async () => {
    const other = await Pool.create({ cpuWorkers: 1, maxBatchSize: 4, maxQueuedItems: 10, whenFull: 'wait' })
    // Long texts: the first call holds every place for a while.
    let firstDone = false
    const first = code(other.embed(backlog(10, 'first').map((t) => t.repeat(6)))).finally(() => (firstDone = true))
    await until('the first call is accepted', () => firstDone || other.status().outstanding > 0)
    expect(firstDone).toBe(false)
    const waiting = code(other.embed(backlog(5, 'waiting')))
    await other.close({ drain: false })
    expect(await waiting).toBe('POOL_CLOSED')
    expect(['resolved', 'POOL_CLOSED']).toContain(await first)
  })
})
