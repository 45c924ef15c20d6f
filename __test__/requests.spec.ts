import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool, PoolError } from '../src/index.js'

// The default model on one worker thread with batches of 1: a backlog of a few hundred texts
// keeps it busy long enough to see queueing, priorities, aborts and timeouts.
const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const backlog = (n: number, tag: string) =>
  Array.from({ length: n }, (_, i) => `${tag} ${i}: a sentence long enough to take a moment to embed.`)

async function code(promise: Promise<unknown>): Promise<string> {
  return promise.then(
    () => 'resolved',
    (e: unknown) => (e instanceof PoolError ? e.code : `not a PoolError: ${String(e)}`),
  )
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
    const bulk = pool.embed(backlog(200, 'bulk'))
    await tick(60) // the backlog is queued first
    const controller = new AbortController()
    const started = performance.now()
    const victim = pool.embed(backlog(5, 'victim'), { signal: controller.signal })
    setTimeout(() => controller.abort(), 20)
    expect(await code(victim)).toBe('ABORTED')
    expect(performance.now() - started).toBeLessThan(1000)
    expect(await bulk).toHaveLength(200)
  })

  it('times out a call stuck behind a backlog', async () => {
    const bulk = pool.embed(backlog(200, 'bulk'))
    await tick(60) // the backlog is queued first
    const started = performance.now()
    const late = pool.embed(['too late'], { timeoutMs: 30 })
    expect(await code(late)).toBe('TIMEOUT')
    expect(performance.now() - started).toBeLessThan(1000)
    expect(await bulk).toHaveLength(200)
  })

  it('serves interactive calls before a bulk backlog', async () => {
    let bulkDone = false
    const bulk = pool.embed(backlog(300, 'bulk')).then((r) => {
      bulkDone = true
      return r
    })
    await tick(60) // the backlog is queued first
    const [v] = await pool.embed(['urgent question'], { priority: 'interactive' })
    expect(v).toHaveLength(pool.dimension)
    expect(bulkDone).toBe(false)
    expect(await bulk).toHaveLength(300)
  })

  it('rejects a call that would exceed maxQueuedItems at once', async () => {
    const bulk = pool.embed(backlog(900, 'bulk'))
    await tick(60) // the backlog is queued first
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
