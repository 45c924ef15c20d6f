import { getEventListeners } from 'node:events'
import { join } from 'node:path'

import { afterEach, describe, expect, it } from 'vitest'

import { Pool, PoolError, type PoolErrorCode, type PoolOptions } from '../src/index.js'
import { HIDDEN, WIDE_HIDDEN } from './fixtures/tiny-bert.js'
import { TINY_BERT, TINY_BERT_WIDE } from './helpers.js'

// The public API driven the way a hurried or hostile caller would: extreme and misspelled
// options, closes that change their mind, streams far longer than anything held in memory.
// Every case settles with a result or a typed PoolError, promptly, and the process lives on.

const open: Pool[] = []
afterEach(async () => {
  await Promise.all(open.splice(0).map((p) => p.close({ drain: false }).catch(() => undefined)))
})

async function create(options: PoolOptions): Promise<Pool> {
  const pool = await Pool.create(options)
  open.push(pool)
  return pool
}

/** The PoolError `promise` rejects with, or a failure when it resolves (closing what it made). */
async function failure(promise: Promise<unknown>): Promise<PoolError> {
  let value: unknown
  try {
    value = await promise
  } catch (error) {
    expect(error).toBeInstanceOf(PoolError)
    return error as PoolError
  }
  if (value instanceof Pool) open.push(value)
  throw new Error(`expected a rejection, got ${String(value)}`)
}

async function rejectsWith(promise: Promise<unknown>, code: PoolErrorCode, message: RegExp): Promise<void> {
  const error = await failure(promise)
  expect(error.code).toBe(code)
  expect(error.message).toMatch(message)
}

const text = (i: number) => `the man ${i} is eating ${'food '.repeat(i % 5)}`

describe('options', () => {
  it('rejects a worker count beyond 64 without building anything', async () => {
    await rejectsWith(Pool.create({ model: TINY_BERT, cpuWorkers: 1e9 }), 'INVALID_INPUT', /cpuWorkers.*1 to 64/)
    await rejectsWith(
      Pool.create({ model: TINY_BERT, devices: ['cuda:0'], sessionsPerDevice: 1e9 }),
      'INVALID_INPUT',
      /sessionsPerDevice.*1 to 64/,
    )
    // Each count in range, the total not.
    await rejectsWith(
      Pool.create({ model: TINY_BERT, devices: ['cpu', 'cuda:0'], cpuWorkers: 40, sessionsPerDevice: 40 }),
      'INVALID_INPUT',
      /1 to 64 workers.*80/,
    )
  }, 10_000)

  it('rejects intraOpThreads beyond its range at once', async () => {
    await rejectsWith(
      Pool.create({ model: TINY_BERT, cpuWorkers: 1, intraOpThreads: 1e6 }),
      'INVALID_INPUT',
      /intraOpThreads.*1 to 256/,
    )
  }, 10_000)

  // Each option out of its range names the range.
  it.each<[string, PoolOptions, RegExp]>([
    ['maxBatchSize', { maxBatchSize: 1e6 }, /maxBatchSize must be an integer from 1 to 4096, got 1000000/],
    ['maxBatchTokens', { maxBatchTokens: 2 ** 31 }, /maxBatchTokens must be an integer from 1 to 1048576/],
    ['maxQueuedItems', { maxQueuedItems: 0 }, /maxQueuedItems must be an integer from 1 to 2147483647/],
    ['maxWaitMs', { maxWaitMs: -1 }, /maxWaitMs must be an integer from 0 to 2147483647/],
    ['modelIdleTimeoutMs', { modelIdleTimeoutMs: 2 ** 31 }, /modelIdleTimeoutMs must be an integer from 1 to/],
    ['modelSwitchDelayMs', { modelSwitchDelayMs: 1.5 }, /modelSwitchDelayMs must be an integer from 0 to/],
    ['maxSwitchesPerHour', { maxSwitchesPerHour: -1 }, /maxSwitchesPerHour must be an integer from 0 to/],
    ['maxLength', { maxLength: 1 }, /maxLength must be an integer from 2 to 1048576/],
    ['cpuMemoryBytes', { cpuMemoryBytes: Infinity }, /cpuMemoryBytes must be a finite number of bytes/],
    ['gpuMemoryBytes', { gpuMemoryBytes: -1 }, /gpuMemoryBytes must be a finite number of bytes/],
    [
      'a model spec memoryBytes',
      { models: { x: { path: TINY_BERT, memoryBytes: Infinity } } },
      /models\["x"\]\.memoryBytes must be a finite number of bytes/,
    ],
    [
      'a model spec priority',
      { models: { x: { path: TINY_BERT, priority: 1e7 } } },
      /models\["x"\]\.priority must be an integer from -1000000 to 1000000/,
    ],
    ['cacheDir', { cacheDir: 42 as unknown as string }, /cacheDir must be a path, got 42/],
    ['ortLibraryPath', { ortLibraryPath: [] as unknown as string }, /ortLibraryPath must be a path, got an array/],
  ])('%s out of range is INVALID_INPUT naming the range', async (_, options, message) => {
    const model = options.models === undefined ? { model: TINY_BERT } : {}
    await rejectsWith(Pool.create({ ...model, cpuWorkers: 1, ...options }), 'INVALID_INPUT', message)
  })

  it('rejects unknown keys of Pool.create options and model specs, naming the nearest valid one', async () => {
    const typo = { model: TINY_BERT, cpuWorkers: 1, maxBatchSzie: 8 } as PoolOptions
    await rejectsWith(Pool.create(typo), 'INVALID_INPUT', /unknown option "maxBatchSzie".*did you mean "maxBatchSize"/)
    const spec = { models: { x: { path: TINY_BERT, pooing: 'cls' } }, cpuWorkers: 1 } as unknown as PoolOptions
    await rejectsWith(
      Pool.create(spec),
      'INVALID_INPUT',
      /unknown option "pooing" in models\["x"\].*did you mean "pooling"/,
    )
  })

  it('rejects unknown keys and bad values of embed, embedStream, preload and close options', async () => {
    const pool = await create({ model: TINY_BERT, cpuWorkers: 2 })
    await rejectsWith(
      pool.embed(['a'], { timeoutMs: 0 }),
      'INVALID_INPUT',
      /timeoutMs must be an integer from 1 to 2147483647/,
    )
    await rejectsWith(
      pool.embed(['a'], { timeOut: 5 } as object),
      'INVALID_INPUT',
      /unknown option "timeOut".*did you mean "timeoutMs"/,
    )
    const stream = (options: object) => pool.embedStream(['a'], options).next()
    await rejectsWith(stream({ chunksize: 8 }), 'INVALID_INPUT', /unknown option "chunksize".*did you mean "chunkSize"/)
    await rejectsWith(stream({ highWaterMark: 0 }), 'INVALID_INPUT', /highWaterMark must be an integer from 1 to/)
    await rejectsWith(stream({ priority: 'urgent' }), 'INVALID_INPUT', /priority/)
    await rejectsWith(stream({ model: 'nope' }), 'INVALID_INPUT', /unknown model "nope"/)
    await rejectsWith(
      pool.preload('default', { worker: [0] } as object),
      'INVALID_INPUT',
      /unknown option "worker".*did you mean "workers"/,
    )
    await rejectsWith(
      pool.preload('default', { workers: [2] }),
      'INVALID_INPUT',
      /workers\[0\] must be an integer from 0 to 1, got 2/,
    )
    await rejectsWith(
      pool.close({ drian: false } as object),
      'INVALID_INPUT',
      /unknown option "drian".*did you mean "drain"/,
    )
    expect(pool.closed).toBe(false)
    expect(await pool.embed(['still open'])).toHaveLength(1)
  })

  it('embedStream uses the model it is given', async () => {
    const pool = await create({ models: { small: TINY_BERT, wide: TINY_BERT_WIDE }, cpuWorkers: 1 })
    const widths = new Set<number>()
    for await (const { embedding } of pool.embedStream([text(1), text(2)], { model: 'wide' })) {
      widths.add(embedding.length)
    }
    expect([...widths]).toEqual([WIDE_HIDDEN])
    for await (const { embedding } of pool.embedStream([text(1)])) expect(embedding).toHaveLength(HIDDEN)
  })
})

describe('close', () => {
  /** Texts in the long call: several seconds of work for one worker. */
  const LONG = 40_000

  /** A pool busy with one call long enough that a drain would take seconds. */
  async function busy(): Promise<{ pool: Pool; call: Promise<PoolErrorCode | 'resolved'> }> {
    const pool = await create({ model: TINY_BERT_WIDE, cpuWorkers: 1, intraOpThreads: 1, maxBatchSize: 1 })
    const texts = Array.from({ length: LONG }, (_, i) => `${text(i)} ${'bread and a dog '.repeat(3)}`)
    const call = pool.embed(texts).then(
      () => 'resolved' as const,
      (error: PoolError) => error.code,
    )
    while (pool.status().items === 0) await new Promise((resolve) => setTimeout(resolve, 5))
    return { pool, call }
  }

  it('a later close({ drain: false }) turns a running drain into a cancel', async () => {
    const { pool, call } = await busy()
    const started = performance.now()
    const draining = pool.close({ drain: true })
    const cancelling = pool.close({ drain: false })
    await Promise.all([draining, cancelling])
    expect(await call).toBe('POOL_CLOSED')
    expect(performance.now() - started).toBeLessThan(2000)
    expect(pool.status().items).toBeLessThan(LONG)
    for (const worker of pool.status().workers) expect(worker.state).toBe('stopped')
    // Idempotent otherwise: nothing is left to escalate.
    expect(pool.close()).toBe(pool.close({ drain: false }))
  })

  it('an invalid drain is INVALID_INPUT and leaves the pool open and closable', async () => {
    const pool = await create({ model: TINY_BERT, cpuWorkers: 1 })
    await rejectsWith(pool.close({ drain: 'soon' as unknown as boolean }), 'INVALID_INPUT', /drain must be a boolean/)
    await rejectsWith(pool.close(null as unknown as object), 'INVALID_INPUT', /options must be an object/)
    expect(pool.closed).toBe(false)
    expect(await pool.embed(['after a bad close'])).toHaveLength(1)
    await pool.close()
    expect(pool.closed).toBe(true)
  })
})

describe('embedStream', () => {
  it('keeps abort listeners bounded over thousands of texts', async () => {
    const pool = await create({ model: TINY_BERT, cpuWorkers: 2, maxBatchSize: 16 })
    const warnings: Error[] = []
    const onWarning = (warning: Error) => warnings.push(warning)
    process.on('warning', onWarning)
    // Watch every signal that gets an abort listener, and the most listeners any of them held.
    const signals = new Set<AbortSignal>()
    const add = AbortSignal.prototype.addEventListener
    AbortSignal.prototype.addEventListener = function (this: AbortSignal, ...args: Parameters<typeof add>) {
      if (args[0] === 'abort') signals.add(this)
      return add.apply(this, args)
    }
    let most = 0
    const outer = new AbortController()
    try {
      let n = 0
      for await (const item of pool.embedStream(
        Array.from({ length: 5000 }, (_, i) => text(i)),
        { highWaterMark: 512, chunkSize: 32, signal: outer.signal },
      )) {
        expect(item.index).toBe(n++)
        if (n % 16 === 0) {
          for (const signal of signals) most = Math.max(most, getEventListeners(signal, 'abort').length)
        }
      }
      expect(n).toBe(5000)
      await new Promise((resolve) => setImmediate(resolve))
    } finally {
      AbortSignal.prototype.addEventListener = add
      process.off('warning', onWarning)
    }
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([])
    expect(most).toBeGreaterThan(0)
    expect(most).toBeLessThanOrEqual(2)
    expect(getEventListeners(outer.signal, 'abort')).toHaveLength(0)
  })
})

/** `promise`, or a rejection once `ms` have passed: a call that hangs fails the test, not the run. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

describe('scheduling', () => {
  it.each([
    { cpuWorkers: 2, holder: 0 },
    { cpuWorkers: 2, holder: 1 },
    { cpuWorkers: 3, holder: 2 },
  ])('answers one-text calls for a model one worker holds ($cpuWorkers workers, held by $holder)', async (c) => {
    const pool = await create({
      models: { a: TINY_BERT, b: { path: TINY_BERT, pooling: 'cls' } },
      defaultModel: 'a',
      cpuWorkers: c.cpuWorkers,
    })
    await pool.preload('b', { workers: [c.holder] })
    for (let i = 0; i < 40; i++) {
      const [v] = await within(pool.embed([`the man ${i}`], { model: 'b' }), 5000, `call ${i}`)
      expect(v).toHaveLength(HIDDEN)
    }
    expect(pool.status().models.b.loadedOn).toEqual([c.holder])
  })

  it('serves a lower-priority model when the higher one, loaded everywhere, is idle', async () => {
    const pool = await create({
      models: {
        hi: { path: TINY_BERT, priority: 1, memoryBytes: 100, preload: true },
        lo: { path: TINY_BERT_WIDE, memoryBytes: 100 },
      },
      defaultModel: 'hi',
      cpuWorkers: 2,
      cpuMemoryBytes: 300,
      modelSwitchDelayMs: 20,
    })
    expect(pool.status().models.hi.loadedOn).toEqual([0, 1])
    const [lo] = await within(pool.embed(['a dog runs'], { model: 'lo' }), 5000, 'the lo call')
    expect(lo).toHaveLength(WIDE_HIDDEN)
    const [hi] = await within(pool.embed(['a cat'], { model: 'hi' }), 5000, 'the hi call')
    expect(hi).toHaveLength(HIDDEN)
  })

  it('fails a call for a model no worker can ever hold at once with MODEL_UNAVAILABLE', async () => {
    const pool = await create({
      models: { a: TINY_BERT, huge: { path: TINY_BERT_WIDE, memoryBytes: 10_000_000 } },
      defaultModel: 'a',
      cpuWorkers: 2,
      cpuMemoryBytes: 400_000,
    })
    const started = performance.now()
    const error = await failure(pool.embed(['x'], { model: 'huge' }))
    expect(error.code).toBe('MODEL_UNAVAILABLE')
    expect(error.message).toContain('huge')
    expect(performance.now() - started).toBeLessThan(1000)
    expect((await failure(pool.preload('huge'))).code).toBe('MODEL_UNAVAILABLE')
    expect(await pool.embed(['still fine'], { model: 'a' })).toHaveLength(1)
  })

  it('settles a huge text within its deadline, and the pool goes on', async () => {
    const pool = await create({ model: TINY_BERT, cpuWorkers: 1 })
    const huge = 'the man is eating food. '.repeat(2_500_000) // 60 MB
    const started = performance.now()
    const outcome = await within(
      pool.embed([huge], { timeoutMs: 200 }).then(
        (v) => v,
        (e: unknown) => e,
      ),
      10_000,
      'the huge call',
    )
    expect(performance.now() - started).toBeLessThan(5000)
    if (outcome instanceof PoolError) expect(outcome.code).toBe('TIMEOUT')
    else expect((outcome as Float32Array[])[0]).toHaveLength(HIDDEN)
    expect(await pool.embed(['after'])).toHaveLength(1)
  })

  it('admits a call with onProgress as a whole: refused whole, or reported up to its total', async () => {
    const pool = await create({ model: TINY_BERT, cpuWorkers: 1, maxQueuedItems: 600 })
    const reports: number[] = []
    const texts = Array.from({ length: 900 }, (_, i) => `text ${i}`)
    const error = await failure(pool.embed(texts, { onProgress: (p) => reports.push(p.done) }))
    expect(error.code).toBe('OVERLOADED')
    await new Promise((r) => setTimeout(r, 50))
    expect(pool.status().items).toBe(0)
    expect(reports).toEqual([])
    const vectors = await pool.embed(texts.slice(0, 600), { onProgress: (p) => reports.push(p.done) })
    expect(vectors).toHaveLength(600)
    expect(reports.at(-1)).toBe(600)
    expect(reports).toEqual([...reports].sort((a, b) => a - b))
    expect(new Set(reports).size).toBe(reports.length)
  })
})

describe('waiting for room', () => {
  it('keeps waiting calls in call order, natively, and answers each', async () => {
    // The built-in model is slow enough here that the first call is still running while the
    // others are looked at.
    const pool = await create({ cpuWorkers: 1, maxQueuedItems: 40, whenFull: 'wait' })
    const sizes = [30, 20, 5]
    const calls = sizes.map((n, c) =>
      pool.embed(Array.from({ length: n }, (_, i) => `call ${c} text ${i} ${'word '.repeat(40)}`)),
    )
    // The third call would fit beside the first, but waits behind the second: nothing overtakes.
    await expect.poll(() => pool.status().waiting, { interval: 5 }).toBe(25)
    const results = await within(Promise.all(calls), 60_000, 'the waiting calls')
    expect(results.map((r) => r.length)).toEqual(sizes)
    expect(pool.status().waiting).toBe(0)
  })
})

describe('out of memory', () => {
  it('runs a batch that exhausts ONNX Runtime memory again in smaller batches', async () => {
    // A child process whose address space is capped about 250 MiB above what the pool uses after
    // start: the first large batch of the built-in model cannot allocate its activations.
    const count = 128
    const { execFileSync } = await import('node:child_process')
    const script = join(import.meta.dirname, 'fixtures', 'out-of-memory.mjs')
    const line = execFileSync(process.execPath, [script, String(count), '250'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 120_000,
    })
    const result = JSON.parse(line.trim().split('\n').at(-1) as string)
    expect(result.error).toBeUndefined()
    expect(result.answered).toBe(count)
    expect(result.errors).toBeGreaterThan(0)
    expect(result.tokenBudget).toBeLessThan(1 << 20)
    // The texts that ran in the smaller batches are embedded as without any limit.
    const pool = await create({ cpuWorkers: 1 })
    const texts = [0, count - 1].map((i) => `text ${i} ${'word '.repeat(200)}`)
    const [first, last] = await pool.embed(texts)
    const cosine = (a: Float32Array, b: number[]) => a.reduce((sum, x, i) => sum + x * b[i], 0)
    expect(cosine(first, result.first)).toBeGreaterThan(0.9999)
    expect(cosine(last, result.last)).toBeGreaterThan(0.9999)
  })
})

describe('chaos', () => {
  it('settles every call exactly once through aborts, timeouts, switches and a close', async () => {
    const pool = await create({
      models: {
        small: { path: TINY_BERT, memoryBytes: 100 },
        wide: { path: TINY_BERT_WIDE, memoryBytes: 100, priority: 1 },
        cls: { path: TINY_BERT, pooling: 'cls', memoryBytes: 100 },
      },
      defaultModel: 'small',
      cpuWorkers: 3,
      cpuMemoryBytes: 3 * 250,
      modelIdleTimeoutMs: 30,
      modelSwitchDelayMs: 5,
      maxQueuedItems: 5000,
    })
    let seed = 7
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed / 2 ** 31
    }
    const names = ['small', 'wide', 'cls']
    const width: Record<string, number> = { small: HIDDEN, wide: WIDE_HIDDEN, cls: HIDDEN }
    const settled = new Map<number, number>()
    const calls: Promise<void>[] = []
    const allowed = new Set(['ABORTED', 'TIMEOUT', 'POOL_CLOSED', 'OVERLOADED'])
    const unexpected: string[] = []
    const side: Promise<unknown>[] = []
    for (let i = 0; i < 3000; i++) {
      const model = names[Math.floor(random() * 3)]
      const count = 1 + Math.floor(random() * 4)
      const texts = Array.from({ length: count }, (_, k) => `call ${i} text ${k} ${'word '.repeat(i % 9)}`)
      const controller = random() < 0.2 ? new AbortController() : undefined
      const timeoutMs = random() < 0.2 ? 1 + Math.floor(random() * 30) : undefined
      const call = pool
        .embed(texts, {
          model,
          priority: random() < 0.3 ? 'interactive' : 'bulk',
          signal: controller?.signal,
          timeoutMs,
        })
        .then(
          (vectors) => {
            if (vectors.length !== count || vectors.some((v) => v.length !== width[model])) {
              unexpected.push(`call ${i}: wrong shape`)
            }
          },
          (error: unknown) => {
            const code = error instanceof PoolError ? error.code : String(error)
            if (!allowed.has(code)) unexpected.push(`call ${i}: ${code}: ${String(error)}`)
          },
        )
        .finally(() => settled.set(i, (settled.get(i) ?? 0) + 1))
      calls.push(call)
      if (controller) setTimeout(() => controller.abort(), Math.floor(random() * 20))
      if (i % 250 === 0) {
        const name = names[i % 3]
        side.push((i % 500 === 0 ? pool.preload(name) : pool.unload(name)).catch((e: unknown) => e))
      }
      if (i % 100 === 0) await new Promise((r) => setImmediate(r))
      if (i === 2000) side.push(pool.close({ drain: random() < 0.5 }))
    }
    await within(Promise.all(calls), 30_000, 'the calls')
    await within(Promise.all(side), 30_000, 'preload, unload and close')
    expect(unexpected).toEqual([])
    expect(settled.size).toBe(3000)
    expect([...settled.values()].every((n) => n === 1)).toBe(true)
    expect(pool.status().workers.every((w) => w.state === 'stopped')).toBe(true)
  }, 60_000)
})
