import { copyFileSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool, PoolError, type PoolErrorCode, resolveLibraryPath } from '../src/index.js'
import { writeTinyBert } from './fixtures/tiny-bert.js'
import { PLATFORM_PACKAGES, missingBinding, platformKey } from '../src/native.js'
import { TINY_BERT } from './helpers.js'

async function rejectsWith(promise: Promise<unknown>, code: PoolErrorCode, message?: RegExp): Promise<PoolError> {
  const error = await promise.then(
    () => {
      throw new Error(`expected a PoolError ${code}, but the call succeeded`)
    },
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(PoolError)
  expect((error as PoolError).code, (error as PoolError).message).toBe(code)
  if (message) expect((error as PoolError).message).toMatch(message)
  return error as PoolError
}

describe('bad input to embed', () => {
  let pool: Pool
  beforeAll(async () => {
    pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 1 })
  })
  afterAll(() => pool?.close())

  it('rejects a non-array', async () => {
    await rejectsWith(pool.embed('just a string' as unknown as string[]), 'INVALID_INPUT', /array/)
    await rejectsWith(pool.embed(undefined as unknown as string[]), 'INVALID_INPUT')
    await rejectsWith(pool.embed({ length: 1, 0: 'x' } as unknown as string[]), 'INVALID_INPUT')
  })

  it('rejects non-string items and names the index', async () => {
    await rejectsWith(pool.embed(['ok', 42 as unknown as string]), 'INVALID_INPUT', /texts\[1\]/)
    await rejectsWith(pool.embed([null as unknown as string]), 'INVALID_INPUT', /null/)
  })

  it('answers an empty array with an empty array', async () => {
    expect(await pool.embed([])).toEqual([])
  })

  it('still works after rejected calls', async () => {
    const [v] = await pool.embed(['a dog'])
    expect(v).toHaveLength(pool.dimension)
  })
})

describe('bad pool options', () => {
  it('rejects an unknown device', async () => {
    await rejectsWith(Pool.create({ model: TINY_BERT, devices: ['tpu:0'] }), 'INVALID_INPUT', /tpu:0/)
    await rejectsWith(Pool.create({ model: TINY_BERT, devices: [] }), 'INVALID_INPUT')
  })

  it('rejects malformed numbers and enums', async () => {
    await rejectsWith(Pool.create({ model: TINY_BERT, cpuWorkers: 0 }), 'INVALID_INPUT', /cpuWorkers/)
    await rejectsWith(Pool.create({ model: TINY_BERT, maxBatchSize: 1.5 }), 'INVALID_INPUT', /maxBatchSize/)
    await rejectsWith(Pool.create({ model: TINY_BERT, pooling: 'max' as 'mean' }), 'INVALID_INPUT', /pooling/)
  })

  it('reports a missing model path', async () => {
    await rejectsWith(Pool.create({ model: '/nonexistent/model/dir' }), 'MODEL_NOT_FOUND', /\/nonexistent\/model\/dir/)
  })

  it('reports a folder without an ONNX file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'inferpool-empty-'))
    await rejectsWith(Pool.create({ model: dir }), 'MODEL_NOT_FOUND', /no ONNX file/)
  })

  it('reports a corrupt ONNX file', async () => {
    const dir = writeTinyBert(mkdtempSync(join(tmpdir(), 'inferpool-corrupt-')))
    writeFileSync(join(dir, 'onnx', 'model.onnx'), Buffer.from('this is not a protobuf model at all'))
    await rejectsWith(Pool.create({ model: dir, cpuWorkers: 1 }), 'MODEL_INVALID')
  })

  it('reports a corrupt tokenizer', async () => {
    const dir = writeTinyBert(mkdtempSync(join(tmpdir(), 'inferpool-tok-')))
    writeFileSync(join(dir, 'tokenizer.json'), '{"not": "a tokenizer"')
    await rejectsWith(Pool.create({ model: dir, cpuWorkers: 1 }), 'MODEL_INVALID', /tokenizer\.json/)
  })

  it('reports a model whose inputs do not fit', async () => {
    const dir = writeTinyBert(mkdtempSync(join(tmpdir(), 'inferpool-inputs-')), {
      inputNames: ['pixel_values', 'attention_mask', 'token_type_ids'],
    })
    await rejectsWith(Pool.create({ model: dir, cpuWorkers: 1 }), 'MODEL_INVALID', /input_ids/)
  })

  it('reports a CUDA device that cannot work', async () => {
    const providers = join(dirname(resolveLibraryPath()), 'libonnxruntime_providers_cuda.so')
    if (existsSync(providers)) {
      // This machine has the CUDA provider: the failure case cannot be produced here with cuda:0.
      await rejectsWith(Pool.create({ model: TINY_BERT, devices: ['cuda:999'] }), 'DEVICE_UNAVAILABLE')
    } else {
      await rejectsWith(Pool.create({ model: TINY_BERT, devices: ['cuda:0'] }), 'DEVICE_UNAVAILABLE', /cuda:0/)
    }
  })
})

describe('a closed pool', () => {
  it('rejects calls after close and close is idempotent', async () => {
    const pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 1 })
    await pool.close()
    await pool.close()
    expect(pool.closed).toBe(true)
    await rejectsWith(pool.embed(['late']), 'POOL_CLOSED')
  })

  it('drains accepted work on close by default', async () => {
    const pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 1, maxBatchSize: 2 })
    const calls = Array.from({ length: 20 }, (_, i) => pool.embed([`the man ${i}`]))
    await pool.close()
    const results = await Promise.all(calls)
    expect(results.every((r) => r.length === 1 && r[0].length === pool.dimension)).toBe(true)
  })

  it('cancels queued work with drain: false, and every call settles', async () => {
    const pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 1, maxBatchSize: 1 })
    // 3,200 texts, one per batch: far more than the worker runs while the calls are made, so
    // work is still queued when the close comes.
    const calls = Array.from({ length: 200 }, (_, i) =>
      pool.embed(Array.from({ length: 16 }, (_, j) => `the man ${i} ${j} ${'food '.repeat(20)}`)),
    )
    const settling = Promise.allSettled(calls)
    await pool.close({ drain: false })
    const settled = await settling
    const rejected = settled.filter((s) => s.status === 'rejected')
    expect(settled).toHaveLength(200)
    expect(rejected.length).toBeGreaterThan(0)
    for (const r of rejected) expect((r as PromiseRejectedResult).reason.code).toBe('POOL_CLOSED')
    for (const s of settled) if (s.status === 'fulfilled') expect(s.value).toHaveLength(16)
  })

  it('supports await using', async () => {
    let outer: Pool | undefined
    {
      await using pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 1 })
      outer = pool
      await pool.embed(['a cat'])
    }
    expect(outer.closed).toBe(true)
  })
})

describe('copying a model folder', () => {
  it('loads a model given as the path of its ONNX file', async () => {
    const dir = writeTinyBert(mkdtempSync(join(tmpdir(), 'inferpool-file-')))
    copyFileSync(join(dir, 'onnx', 'model.onnx'), join(dir, 'model.onnx'))
    const pool = await Pool.create({ model: join(dir, 'model.onnx'), cpuWorkers: 1 })
    try {
      expect((await pool.embed(['a dog']))[0]).toHaveLength(pool.dimension)
    } finally {
      await pool.close()
    }
  })
})

describe('a native addon that cannot be loaded', () => {
  it('is NATIVE_BINDING_MISSING naming the platform, the package and the remedies', () => {
    const cause = new Error('Cannot find native binding. npm has a bug related to optional dependencies')
    const error = missingBinding(cause)
    expect(error).toBeInstanceOf(PoolError)
    expect(error.code).toBe('NATIVE_BINDING_MISSING')
    expect(error.cause).toBe(cause)
    for (const part of [process.platform, process.arch, process.version, 'NAPI_RS_NATIVE_LIBRARY_PATH', 'optional']) {
      expect(error.message).toContain(part)
    }
    // Every prebuilt package is named; the one for this platform is named as looked for.
    for (const suffix of Object.values(PLATFORM_PACKAGES)) expect(error.message).toContain(`inferpool-${suffix}`)
    const own = PLATFORM_PACKAGES[platformKey()]
    if (own) expect(error.message).toContain(`looked for the package inferpool-${own}`)
    // napi's generic message blames npm; it stays in the cause, not in ours.
    expect(error.message).not.toContain('npm has a bug')
    // Another failure (a version mismatch, a broken file) is quoted.
    expect(missingBinding(new Error('Native binding package version mismatch')).message).toContain('version mismatch')
  })
})
