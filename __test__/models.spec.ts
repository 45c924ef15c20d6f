import { afterEach, describe, expect, it } from 'vitest'

import { Pool, type PoolEvent, PoolError } from '../src/index.js'
import { HIDDEN, MAX_LENGTH, WIDE_HIDDEN } from './fixtures/tiny-bert.js'
import { type Reference, cosine, createReference } from './fixtures/reference.js'
import { TINY_BERT, TINY_BERT_WIDE } from './helpers.js'

// Two generated models of different sizes and widths (16 and 48) in one pool of CPU workers:
// each call gets its own model's embeddings, nothing is lost or run twice while models load,
// switch and unload, and eviction, idle unloads and the switch cap follow the documented policy.

const open: Pool[] = []
afterEach(async () => {
  await Promise.all(open.splice(0).map((p) => p.close({ drain: false })))
})

async function create(options: Parameters<typeof Pool.create>[0]): Promise<{ pool: Pool; events: PoolEvent[] }> {
  const pool = await Pool.create(options)
  open.push(pool)
  const events: PoolEvent[] = []
  for (const type of [
    'model-loaded',
    'model-unloaded',
    'model-evicted',
    'model-load-failed',
    'worker-failed',
    'worker-recovered',
  ] as const) {
    pool.on(type, (event) => events.push(event))
  }
  return { pool, events }
}

/** Resolves with the first event that `match` accepts, or rejects after `ms`. */
function next(pool: Pool, type: PoolEvent['type'], match: (e: PoolEvent) => boolean, ms = 5000): Promise<PoolEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} event within ${ms} ms`)), ms)
    const listener = (event: PoolEvent) => {
      if (!match(event)) return
      clearTimeout(timer)
      pool.off(type, listener)
      resolve(event)
    }
    pool.on(type, listener)
  })
}

const texts = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => `${prefix} the man ${i} is eating ${'food '.repeat(i % 5)}`)

describe('two models in one pool', () => {
  it('serves each call with its own model under mixed load, losing and repeating nothing', async () => {
    const references: Record<string, Reference> = {
      small: await createReference(`${TINY_BERT}/onnx/model.onnx`, MAX_LENGTH),
      wide: await createReference(`${TINY_BERT_WIDE}/onnx/model.onnx`, MAX_LENGTH),
    }
    try {
      // Each worker's share of the budget holds one model at a time, so the load makes workers
      // switch models back and forth.
      const { pool, events } = await create({
        models: {
          small: { path: TINY_BERT, memoryBytes: 1000 },
          wide: { path: TINY_BERT_WIDE, memoryBytes: 3000 },
        },
        cpuWorkers: 3,
        cpuMemoryBytes: 3 * 3500,
        maxBatchSize: 8,
        modelSwitchDelayMs: 1,
      })
      expect(pool.models).toEqual(['small', 'wide'])
      const calls = Array.from({ length: 60 }, (_, c) => ({
        model: (c * 7) % 3 === 0 ? 'wide' : 'small',
        texts: texts(`call ${c}`, 1 + (c % 6)),
      }))
      const results = await Promise.all(calls.map((c) => pool.embed(c.texts, { model: c.model })))
      const submitted: Record<string, number> = { small: 0, wide: 0 }
      for (const [c, call] of calls.entries()) {
        submitted[call.model] += call.texts.length
        const width = call.model === 'wide' ? WIDE_HIDDEN : HIDDEN
        for (const [i, text] of call.texts.entries()) {
          expect(results[c][i]).toHaveLength(width)
          expect(cosine(results[c][i], await references[call.model].embed(text))).toBeGreaterThan(0.9999)
        }
      }

      const status = pool.status()
      expect(status.models.small.items).toBe(submitted.small)
      expect(status.models.wide.items).toBe(submitted.wide)
      expect(status.models.small.dimension).toBe(HIDDEN)
      expect(status.models.wide.dimension).toBe(WIDE_HIDDEN)
      expect(status.items).toBe(submitted.small + submitted.wide)
      expect(status.queued + status.inFlight).toBe(0)
      for (const model of ['small', 'wide']) {
        expect(status.models[model].latencyMs.p50).toBeGreaterThan(0)
        expect(status.models[model].latencyMs.p99).toBeGreaterThanOrEqual(status.models[model].latencyMs.p50 as number)
      }
      for (const w of status.workers) {
        expect(w.memoryUsedBytes).toBeLessThanOrEqual(w.memoryBudgetBytes)
        expect(w.memoryBudgetBytes).toBe(3500)
      }
      // Events and counters tell the same story as what is loaded now.
      await new Promise((r) => setImmediate(r))
      const count = (type: string) => events.filter((e) => e.type === type).length
      const held = Object.values(status.models).reduce((n, m) => n + m.loadedOn.length, 0)
      expect(count('model-loaded') - count('model-unloaded') - count('model-evicted')).toBe(held)
      const switches = status.workers.reduce((n, w) => n + w.switches, 0)
      expect(switches).toBe(status.models.small.evictions + status.models.wide.evictions)
      expect(count('model-evicted')).toBe(switches)

      // The exposition carries the same numbers, per model.
      const metrics = pool.metrics()
      const sum = (name: string, model: string) =>
        metrics
          .split('\n')
          .filter((l) => l.startsWith(`${name}{`) && l.includes(`model="${model}"`))
          .reduce((n, l) => n + Number(l.split(' ').pop()), 0)
      expect(sum('inferpool_items_total', 'small')).toBe(submitted.small)
      expect(sum('inferpool_items_total', 'wide')).toBe(submitted.wide)
      expect(sum('inferpool_model_evictions_total', 'wide')).toBe(status.models.wide.evictions)
      expect(sum('inferpool_model_loads_total', 'small')).toBe(status.models.small.loads)
      expect(sum('inferpool_request_duration_seconds_count', 'wide')).toBe(
        calls.filter((c) => c.model === 'wide').length,
      )
    } finally {
      await Promise.all(Object.values(references).map((r) => r.release()))
    }
  })

  it('evicts the least used model first, and never one of higher priority', async () => {
    const { pool, events } = await create({
      models: {
        a: { path: TINY_BERT, memoryBytes: 100 },
        b: { path: TINY_BERT, memoryBytes: 100 },
        c: { path: TINY_BERT_WIDE, memoryBytes: 100 },
        vip: { path: TINY_BERT_WIDE, memoryBytes: 100, priority: 10 },
      },
      defaultModel: 'a',
      cpuWorkers: 1,
      cpuMemoryBytes: 250,
    })
    // "a" embeds 12 texts, then "b" one: "b" is the more recent, "a" the more used.
    await pool.embed(texts('a', 12), { model: 'a' })
    await pool.embed(texts('b', 1), { model: 'b' })
    await pool.embed(texts('c', 1), { model: 'c' })
    await new Promise((r) => setImmediate(r))
    const evicted = () => events.filter((e) => e.type === 'model-evicted').map((e) => [e.model, e.forModel])
    expect(evicted()).toEqual([['b', 'c']])
    // "vip" outranks everything: it takes the place of the less used of "a" and "c" ...
    await pool.embed(texts('vip', 1), { model: 'vip' })
    await new Promise((r) => setImmediate(r))
    expect(evicted()).toEqual([
      ['b', 'c'],
      ['c', 'vip'],
    ])
    // ... and "b" (priority 0) may then evict "a" but never "vip".
    await pool.embed(texts('b', 1), { model: 'b' })
    await new Promise((r) => setImmediate(r))
    expect(evicted().at(-1)).toEqual(['a', 'b'])
    expect(pool.status().workers[0].loadedModels.sort()).toEqual(['b', 'vip'])
    // Room for "c" is made by evicting "b", however recent: "vip" stays.
    await pool.preload('c')
    expect(pool.status().workers[0].loadedModels.sort()).toEqual(['c', 'vip'])
  })

  it('unloads a model idle for modelIdleTimeoutMs and loads it again on demand', async () => {
    const { pool } = await create({
      models: { small: TINY_BERT, wide: TINY_BERT_WIDE },
      cpuWorkers: 2,
      modelIdleTimeoutMs: 100,
    })
    const unloaded = next(pool, 'model-unloaded', (e) => e.model === 'wide' && e.reason === 'idle')
    await pool.embed(texts('x', 3), { model: 'wide' })
    expect(pool.status().models.wide.loadedOn.length).toBeGreaterThan(0)
    await unloaded
    await expect.poll(() => pool.status().models.wide.loadedOn).toEqual([])
    const again = await pool.embed(texts('x', 2), { model: 'wide' })
    expect(again[0]).toHaveLength(WIDE_HIDDEN)
    expect(pool.status().models.wide.loads).toBeGreaterThanOrEqual(2)
  })

  it('holds the switch cap: past it, calls for other models wait (and time out)', async () => {
    const { pool } = await create({
      models: { small: { path: TINY_BERT, memoryBytes: 100 }, wide: { path: TINY_BERT_WIDE, memoryBytes: 100 } },
      cpuWorkers: 1,
      cpuMemoryBytes: 150,
      maxSwitchesPerHour: 1,
    })
    await pool.embed(texts('s', 2), { model: 'small' }) // preloaded: no switch
    await pool.embed(texts('w', 2), { model: 'wide' }) // switch 1
    const error = await pool.embed(texts('s', 1), { model: 'small', timeoutMs: 300 }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(PoolError)
    expect((error as PoolError).code).toBe('TIMEOUT')
    const worker = pool.status().workers[0]
    expect(worker.switches).toBe(1)
    expect(worker.loadedModels).toEqual(['wide'])
    expect((await pool.embed(texts('w', 1), { model: 'wide' }))[0]).toHaveLength(WIDE_HIDDEN)
  })

  it('preloads on chosen workers, unloads everywhere, and keeps affinity', async () => {
    const { pool } = await create({
      models: { small: TINY_BERT, wide: { path: TINY_BERT_WIDE, devices: ['cpu'] } },
      cpuWorkers: 3,
    })
    await pool.preload('wide', { workers: [1] })
    expect(pool.status().models.wide.loadedOn).toEqual([1])
    expect(pool.status().workers[1].state).toBe('idle')
    expect(await pool.unload('wide')).toBe(1)
    expect(pool.status().models.wide.loadedOn).toEqual([])
    expect((await pool.embed(['after'], { model: 'wide' }))[0]).toHaveLength(WIDE_HIDDEN)
    await expect(pool.embed(['x'], { model: 'nope' })).rejects.toMatchObject({ code: 'INVALID_INPUT' })
    await expect(pool.preload('nope')).rejects.toMatchObject({ code: 'INVALID_INPUT' })
    await expect(
      Pool.create({ models: { wide: { path: TINY_BERT_WIDE, devices: ['cuda:0'] } }, devices: ['cpu'] }),
    ).rejects.toMatchObject({ code: 'INVALID_INPUT', message: expect.stringContaining('may only use cuda:0') })
    await expect(
      Pool.create({ models: { big: { path: TINY_BERT, memoryBytes: 10_000 } }, cpuWorkers: 2, cpuMemoryBytes: 1000 }),
    ).rejects.toMatchObject({ code: 'INVALID_INPUT', message: expect.stringContaining('can load on no worker') })
    await expect(Pool.create({ model: TINY_BERT, models: { a: TINY_BERT } })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
    })
  })
})
