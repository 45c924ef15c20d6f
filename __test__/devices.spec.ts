import { afterEach, describe, expect, it } from 'vitest'

import { Pool, PoolError } from '../src/index.js'
import { TINY_BERT } from './helpers.js'

// Device selection on a machine with or without a GPU: `cuda:999` cannot work anywhere, so the
// fallback path is exercised on every machine.

const saved = { devices: process.env.INFERPOOL_DEVICES, visible: process.env.CUDA_VISIBLE_DEVICES }
afterEach(() => {
  for (const [key, value] of [
    ['INFERPOOL_DEVICES', saved.devices],
    ['CUDA_VISIBLE_DEVICES', saved.visible],
  ] as const) {
    if (value === undefined) delete process.env[key]
    else process.env[key] = value
  }
})

async function failure(promise: Promise<unknown>): Promise<PoolError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(PoolError)
  return error as PoolError
}

const texts = ['A man is eating food.', 'A man is eating a piece of bread.', 'Der Himmel ist blau.']

describe('devices', () => {
  it('runs a GPU worker that cannot start on the CPU when asked, and says why', async () => {
    const reference = await Pool.create({ model: TINY_BERT, cpuWorkers: 1 })
    const expected = await reference.embed(texts)
    await reference.close()

    const pool = await Pool.create({
      model: TINY_BERT,
      devices: ['cuda:999', 'cpu'],
      cpuWorkers: 1,
      sessionsPerDevice: 2,
      onDeviceFailure: 'cpu',
    })
    try {
      const workers = pool.status().workers
      expect(workers.map((w) => w.device)).toEqual(['cuda:999', 'cuda:999', 'cpu'])
      for (const w of workers.slice(0, 2)) {
        expect(w.provider).toBe('cpu')
        expect(w.fallback).toMatch(/cuda:999/)
      }
      expect(workers[2]).toMatchObject({ provider: 'cpu' })
      expect(workers[2].fallback).toBeUndefined()
      const vectors = await pool.embed(texts)
      vectors.forEach((v, i) => expect(Array.from(v)).toEqual(Array.from(expected[i])))
    } finally {
      await pool.close()
    }
  })

  it("marks a GPU worker that cannot start 'failed' when asked, and runs without it", async () => {
    const pool = await Pool.create({
      model: TINY_BERT,
      devices: ['cuda:999', 'cpu'],
      cpuWorkers: 1,
      onDeviceFailure: 'unavailable',
    })
    try {
      const [gpu, cpu] = pool.status().workers
      expect(gpu).toMatchObject({ device: 'cuda:999', state: 'failed', loadedModels: [] })
      expect(gpu.failure).toMatch(/cuda:999/)
      expect(cpu).toMatchObject({ device: 'cpu', state: 'idle', loadedModels: ['default'] })
      const texts = Array.from({ length: 40 }, (_, i) => `text ${i}`)
      expect(await pool.embed(texts)).toHaveLength(40)
      expect(pool.status().workers.map((w) => w.items)).toEqual([0, 40])
    } finally {
      await pool.close()
    }
    // With no worker left, it does not start.
    const error = await failure(
      Pool.create({ model: TINY_BERT, devices: ['cuda:999'], onDeviceFailure: 'unavailable' }),
    )
    expect(error.code).toBe('DEVICE_UNAVAILABLE')
    expect(error.message).toMatch(/no worker left.*cuda:999/)
  })

  it('fails to start with DEVICE_UNAVAILABLE by default', async () => {
    const error = await failure(Pool.create({ model: TINY_BERT, devices: ['cuda:999'] }))
    expect(error.code).toBe('DEVICE_UNAVAILABLE')
    expect(error.message).toMatch(/cuda:999/)
  })

  it("'auto' uses the CPU when no GPU is visible", async () => {
    process.env.CUDA_VISIBLE_DEVICES = ''
    const pool = await Pool.create({ model: TINY_BERT, devices: 'auto', cpuWorkers: 2 })
    expect(pool.status().workers.map((w) => [w.device, w.provider])).toEqual([
      ['cpu', 'cpu'],
      ['cpu', 'cpu'],
    ])
    await pool.close()
  })

  it("'auto' gives every visible GPU a worker, which falls back to the CPU if it cannot run", async () => {
    process.env.CUDA_VISIBLE_DEVICES = '0'
    const pool = await Pool.create({ model: TINY_BERT, devices: 'auto' })
    const [worker, ...rest] = pool.status().workers
    expect(rest).toEqual([])
    expect(worker.device).toBe('cuda:0')
    // On a machine with a working GPU it runs there; elsewhere the reason is reported.
    if (worker.provider === 'cpu') expect(worker.fallback).toMatch(/cuda:0/)
    else expect(worker.fallback).toBeUndefined()
    expect(await pool.embed(texts)).toHaveLength(3)
    await pool.close()
  })

  it('INFERPOOL_DEVICES overrides the option, and a bad value is named', async () => {
    process.env.INFERPOOL_DEVICES = 'cpu'
    const pool = await Pool.create({ model: TINY_BERT, devices: ['cuda:999'], cpuWorkers: 1 })
    expect(pool.status().workers.map((w) => w.device)).toEqual(['cpu'])
    await pool.close()
    process.env.INFERPOOL_DEVICES = 'cpu,gpu'
    const error = await failure(Pool.create({ model: TINY_BERT }))
    expect(error.code).toBe('INVALID_INPUT')
    expect(error.message).toMatch(/"gpu".*INFERPOOL_DEVICES/)
  })

  it('validates the device options', async () => {
    expect((await failure(Pool.create({ model: TINY_BERT, devices: 'all' as 'auto' }))).code).toBe('INVALID_INPUT')
    expect((await failure(Pool.create({ model: TINY_BERT, sessionsPerDevice: 0 }))).code).toBe('INVALID_INPUT')
    expect((await failure(Pool.create({ model: TINY_BERT, onDeviceFailure: 'gpu' as 'cpu' }))).code).toBe(
      'INVALID_INPUT',
    )
  })
})
