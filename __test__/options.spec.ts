import { describe, expect, it } from 'vitest'

import { distance, nearest } from '../src/check.js'
import {
  type DeviceEnv,
  type OnDeviceFailure,
  needsGpuMemory,
  parseGpuMemory,
  planDevices,
  queryGpuMemory,
  visibleGpus,
  workerBudgets,
} from '../src/devices.js'
import { PoolError } from '../src/errors.js'
import {
  type Host,
  type ModelChoice,
  checkCall,
  checkCloseOptions,
  checkEmbedOptions,
  checkPreload,
  checkStreamOptions,
  modelIndex,
  resolveOptions,
} from '../src/options.js'
import type { PoolOptions } from '../src/types.js'

// Option resolution and device planning as pure functions: the environment, the cores and the
// GPUs are arguments, so these run without a native pool (and without a GPU).

const GiB = 2 ** 30

/** A machine with `cores` cores, no environment variables and `gpus` GPUs. */
function host(cores = 8, gpus = 0, env: Host['env'] = {}): Host {
  return { env, cores, gpuCount: () => gpus }
}

/** The `INVALID_INPUT` message `run` throws; fails when it throws anything else or nothing. */
function invalid(run: () => unknown): string {
  let thrown: unknown
  try {
    run()
  } catch (error) {
    thrown = error
  }
  expect(thrown).toBeInstanceOf(PoolError)
  expect((thrown as PoolError).code).toBe('INVALID_INPUT')
  return (thrown as PoolError).message
}

const resolveWith = (options: PoolOptions, cores = 8) => resolveOptions(options, host(cores))

describe('resolveOptions', () => {
  it('fills in every default', () => {
    expect(resolveWith({})).toEqual({
      models: [
        {
          name: 'default',
          path: 'default',
          pooling: 'mean',
          normalize: true,
          maxLength: undefined,
          priority: 0,
          workers: undefined,
          memoryBytes: undefined,
        },
      ],
      defaultModel: 0,
      preload: [0],
      devices: ['cpu', 'cpu', 'cpu', 'cpu'],
      memory: { threshold: 0.8, cpuBytes: undefined, gpuBytes: undefined },
      ortLibraryPath: undefined,
      cacheDir: undefined,
      scheduler: {
        intraOpThreads: 2,
        maxBatchSize: 64,
        maxBatchTokens: 16384,
        maxQueuedItems: 1 << 20,
        maxWaitMs: 0,
        cpuFallback: false,
        tolerateDeviceFailures: false,
        waitWhenFull: false,
        idleTimeoutMs: undefined,
        maxSwitchesPerHour: undefined,
        switchDelayMs: 100,
      },
    })
  })

  it('derives CPU workers and intra-op threads from the cores', () => {
    const threads = (options: PoolOptions, cores: number) => {
      const { devices, scheduler } = resolveWith(options, cores)
      return [devices.length, scheduler.intraOpThreads]
    }
    expect(threads({}, 1)).toEqual([1, 1])
    expect(threads({}, 2)).toEqual([2, 1])
    expect(threads({}, 6)).toEqual([4, 1])
    expect(threads({}, 16)).toEqual([4, 4])
    expect(threads({ cpuWorkers: 1 }, 2)).toEqual([1, 2])
    expect(threads({ cpuWorkers: 1 }, 1024)).toEqual([1, 256])
    expect(threads({ cpuWorkers: 8 }, 2)).toEqual([8, 1])
    expect(threads({ cpuWorkers: 2, intraOpThreads: 3 }, 2)).toEqual([2, 3])
  })

  it('passes the other settings through', () => {
    const { scheduler, memory, ortLibraryPath, cacheDir } = resolveWith({
      maxBatchSize: 4096,
      maxBatchTokens: 1,
      maxQueuedItems: 2 ** 31 - 1,
      maxWaitMs: 5,
      whenFull: 'wait',
      onDeviceFailure: 'unavailable',
      modelIdleTimeoutMs: 60_000,
      maxSwitchesPerHour: 0,
      modelSwitchDelayMs: 0,
      memoryThreshold: 1,
      cpuMemoryBytes: 0,
      gpuMemoryBytes: 8 * GiB,
      ortLibraryPath: '/opt/ort/libonnxruntime.so',
      cacheDir: '/tmp/cache',
    })
    expect(scheduler).toMatchObject({
      maxBatchSize: 4096,
      maxBatchTokens: 1,
      maxQueuedItems: 2 ** 31 - 1,
      maxWaitMs: 5,
      waitWhenFull: true,
      tolerateDeviceFailures: true,
      cpuFallback: false,
      idleTimeoutMs: 60_000,
      maxSwitchesPerHour: 0,
      switchDelayMs: 0,
    })
    expect(memory).toEqual({ threshold: 1, cpuBytes: 0, gpuBytes: 8 * GiB })
    expect([ortLibraryPath, cacheDir]).toEqual(['/opt/ort/libonnxruntime.so', '/tmp/cache'])
  })

  it.each([
    ['cpuWorkers', 0, /cpuWorkers must be an integer from 1 to 64, got 0/],
    ['cpuWorkers', 65, /from 1 to 64, got 65/],
    ['sessionsPerDevice', 0, /sessionsPerDevice must be an integer from 1 to 64/],
    ['intraOpThreads', 257, /intraOpThreads must be an integer from 1 to 256/],
    ['maxBatchSize', 1.5, /maxBatchSize must be an integer from 1 to 4096, got 1.5/],
    ['maxBatchSize', '8', /maxBatchSize must be an integer from 1 to 4096, got "8"/],
    ['maxBatchTokens', 2 ** 20 + 1, /maxBatchTokens must be an integer from 1 to 1048576/],
    ['maxQueuedItems', 2 ** 31, /maxQueuedItems must be an integer from 1 to 2147483647/],
    ['maxWaitMs', -1, /maxWaitMs must be an integer from 0 to 2147483647/],
    ['modelIdleTimeoutMs', 0, /modelIdleTimeoutMs must be an integer from 1 to/],
    ['maxSwitchesPerHour', -1, /maxSwitchesPerHour must be an integer from 0 to/],
    ['modelSwitchDelayMs', null, /modelSwitchDelayMs must be an integer from 0 to 2147483647, got null/],
    ['memoryThreshold', 0, /memoryThreshold must be a number in \(0, 1\], got 0/],
    ['memoryThreshold', 1.5, /memoryThreshold must be a number in \(0, 1\]/],
    ['memoryThreshold', Number.NaN, /memoryThreshold must be a number in \(0, 1\], got NaN/],
    ['cpuMemoryBytes', -1, /cpuMemoryBytes must be a finite number of bytes from 0 to 9007199254740991/],
    ['gpuMemoryBytes', Infinity, /gpuMemoryBytes must be a finite number of bytes/],
    ['maxLength', 1, /maxLength must be an integer from 2 to 1048576/],
    ['whenFull', 'block', /whenFull must be "reject" or "wait", got "block"/],
    ['onDeviceFailure', 'gpu', /onDeviceFailure must be "fail", "cpu" or "unavailable", got "gpu"/],
    ['pooling', 'max', /pooling must be "mean" or "cls", got "max"/],
    ['normalize', 'yes', /normalize must be a boolean/],
    ['ortLibraryPath', '', /ortLibraryPath must be a path, got ""/],
    ['cacheDir', 5, /cacheDir must be a path, got 5/],
    ['model', '', /model must be "default" or a path/],
  ])('rejects %s: %s', (key, value, message) => {
    expect(invalid(() => resolveWith({ [key]: value } as PoolOptions))).toMatch(message)
  })

  it('names an unknown key and the nearest known one', () => {
    expect(invalid(() => resolveWith({ maxBatchSzie: 8 } as PoolOptions))).toBe(
      'unknown option "maxBatchSzie": did you mean "maxBatchSize"?',
    )
    expect(invalid(() => resolveWith({ DEVICES: ['cpu'] } as PoolOptions))).toMatch(/did you mean "devices"\?/)
    expect(invalid(() => resolveWith({ zzz: 1 } as PoolOptions))).toMatch(
      /^unknown option "zzz": expected one of model, models, defaultModel, .*, cacheDir$/,
    )
    expect(invalid(() => resolveWith({ models: { a: { path: 'a', prioirty: 1 } as { path: string } } }))).toBe(
      'unknown option "prioirty" in models["a"]: did you mean "priority"?',
    )
  })

  it('wants an object', () => {
    expect(invalid(() => resolveWith(null as unknown as PoolOptions))).toBe('options must be an object, got null')
    expect(invalid(() => resolveWith([] as unknown as PoolOptions))).toBe('options must be an object, got an array')
  })

  it('reads nothing from the process: the environment is an argument', () => {
    const saved = process.env.INFERPOOL_DEVICES
    process.env.INFERPOOL_DEVICES = 'cuda:0'
    try {
      expect(resolveOptions({ cpuWorkers: 1 }, host(4)).devices).toEqual(['cpu'])
    } finally {
      if (saved === undefined) delete process.env.INFERPOOL_DEVICES
      else process.env.INFERPOOL_DEVICES = saved
    }
  })
})

describe('models', () => {
  it('resolves specs with the pool defaults, and their own settings over them', () => {
    const { models } = resolveWith({
      models: {
        plain: './a',
        own: { path: './b', pooling: 'cls', normalize: false, maxLength: 64, priority: -3, memoryBytes: 1e6 },
      },
      pooling: 'cls',
      normalize: true,
      maxLength: 256,
    })
    expect(models).toEqual([
      {
        name: 'plain',
        path: './a',
        pooling: 'cls',
        normalize: true,
        maxLength: 256,
        priority: 0,
        workers: undefined,
        memoryBytes: undefined,
      },
      {
        name: 'own',
        path: './b',
        pooling: 'cls',
        normalize: false,
        maxLength: 64,
        priority: -3,
        workers: undefined,
        memoryBytes: 1e6,
      },
    ])
  })

  it("is 'default' named after itself when only model is given", () => {
    expect(resolveWith({ model: './m' }).models.map((m) => [m.name, m.path])).toEqual([['default', './m']])
  })

  it('picks the default model: as given, else "default", else the first', () => {
    const pick = (options: PoolOptions) => resolveWith(options).defaultModel
    expect(pick({ models: { a: 'a', b: 'b' } })).toBe(0)
    expect(pick({ models: { a: 'a', default: 'b' } })).toBe(1)
    expect(pick({ models: { a: 'a', default: 'b' }, defaultModel: 'a' })).toBe(0)
    expect(invalid(() => pick({ models: { a: 'a' }, defaultModel: 'b' }))).toBe(
      'defaultModel "b" is not one of the models',
    )
  })

  it('preloads the default model first unless it is listed, and the models asked for', () => {
    const preload = (options: PoolOptions) => resolveWith(options).preload
    expect(preload({ models: { a: 'a', b: 'b' } })).toEqual([0])
    expect(preload({ models: { a: 'a', b: { path: 'b', preload: true } } })).toEqual([0, 1])
    expect(preload({ models: { a: { path: 'a', preload: true }, b: 'b' }, defaultModel: 'b' })).toEqual([0, 1])
    expect(
      preload({ models: { a: { path: 'a', preload: true }, b: { path: 'b', preload: false } }, defaultModel: 'b' }),
    ).toEqual([1, 0])
  })

  it.each([
    [{ model: 'a', models: { b: 'b' } }, /give either model or models, not both/],
    [{ models: {} }, /models must name 1 to 64 models, got 0/],
    [{ models: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`m${i}`, 'x'])) }, /1 to 64 models, got 65/],
    [{ models: ['a'] }, /models must be an object of \{ name: path or model spec \}/],
    [{ models: { a: '' } }, /models\["a"\] must be "default", a path, or \{ path, \.\.\. \}/],
    [
      { models: { a: { path: 'a', kind: 'generation' } } },
      /models\["a"\]\.kind must be "embedding" or "seq2seq", got "generation"/,
    ],
    [{ models: { a: { path: 'a', pooling: 'max' } } }, /models\["a"\]\.pooling must be "mean" or "cls"/],
    [{ models: { a: { path: 'a', normalize: 1 } } }, /models\["a"\]\.normalize must be a boolean/],
    [
      { models: { a: { path: 'a', priority: 1_000_001 } } },
      /models\["a"\]\.priority must be an integer from -1000000 to 1000000/,
    ],
    [{ models: { a: { path: 'a', devices: [] } } }, /models\["a"\]\.devices must be an array of 1 to 64 devices/],
    [{ models: { a: { path: 'a', preload: 'yes' } } }, /models\["a"\]\.preload must be a boolean/],
    [{ models: { a: { path: 'a', maxLength: 1 } } }, /models\["a"\]\.maxLength must be an integer from 2/],
    [{ models: { a: { path: 'a', memoryBytes: -1 } } }, /models\["a"\]\.memoryBytes must be a finite number of bytes/],
  ])('rejects a malformed model spec (%#)', (options, message) => {
    expect(invalid(() => resolveWith(options as PoolOptions))).toMatch(message)
  })

  it('places a model on the workers of its devices', () => {
    const workers = (allowed: string[]) =>
      resolveOptions(
        { devices: ['cuda:0', 'cuda:1', 'cpu'], cpuWorkers: 1, models: { a: { path: 'a', devices: allowed } } },
        host(),
      ).models[0].workers
    expect(workers(['cuda'])).toEqual([0, 1])
    expect(workers(['cuda:1', 'cpu'])).toEqual([1, 2])
    expect(invalid(() => workers(['tpu']))).toBe('models["a"].devices: unknown device "tpu"')
    expect(invalid(() => workers(['cuda:2']))).toBe(
      'model "a" may only use cuda:2, but the pool runs on cuda:0, cuda:1, cpu',
    )
  })
})

describe('devices', () => {
  interface Machine {
    cpuWorkers?: number
    sessionsPerDevice?: number
    onDeviceFailure?: OnDeviceFailure
    env?: DeviceEnv
    gpus?: number
  }
  const plan = (
    option: unknown,
    { cpuWorkers = 2, sessionsPerDevice = 1, onDeviceFailure = 'fail', env = {}, gpus = 0 }: Machine = {},
  ) => planDevices(option, { cpuWorkers, sessionsPerDevice, onDeviceFailure }, env, () => gpus)

  it('gives cpu its CPU workers and each GPU its sessions', () => {
    expect(plan(undefined)).toEqual({ devices: ['cpu', 'cpu'], cpuFallback: false })
    expect(plan(['cuda:1', 'cpu', 'cuda'], { cpuWorkers: 1, sessionsPerDevice: 2 }).devices).toEqual([
      'cuda:1',
      'cuda:1',
      'cpu',
      'cuda:0',
      'cuda:0',
    ])
    expect(plan(['cuda:0'], { onDeviceFailure: 'cpu' }).cpuFallback).toBe(true)
  })

  it("'auto' takes every visible GPU, falling back to the CPU, and asks for GPUs only then", () => {
    expect(plan('auto', { gpus: 2, sessionsPerDevice: 2 })).toEqual({
      devices: ['cuda:0', 'cuda:0', 'cuda:1', 'cuda:1'],
      cpuFallback: true,
    })
    expect(plan('auto', { gpus: 0, cpuWorkers: 3 })).toEqual({ devices: ['cpu', 'cpu', 'cpu'], cpuFallback: true })
    const never = () => {
      throw new Error('asked for the GPUs')
    }
    expect(planDevices(['cpu'], { cpuWorkers: 1, sessionsPerDevice: 1, onDeviceFailure: 'fail' }, {}, never)).toEqual({
      devices: ['cpu'],
      cpuFallback: false,
    })
  })

  it('INFERPOOL_DEVICES overrides the option and is named when wrong', () => {
    expect(plan(['cuda:999'], { env: { INFERPOOL_DEVICES: ' cpu ' } }).devices).toEqual(['cpu', 'cpu'])
    expect(plan(['cpu'], { env: { INFERPOOL_DEVICES: 'cuda:0, cuda:1' } }).devices).toEqual(['cuda:0', 'cuda:1'])
    expect(plan(['cpu'], { env: { INFERPOOL_DEVICES: 'auto' }, gpus: 1 })).toEqual({
      devices: ['cuda:0'],
      cpuFallback: true,
    })
    expect(plan(['cpu'], { env: { INFERPOOL_DEVICES: '' } }).devices).toEqual(['cpu', 'cpu'])
    expect(invalid(() => plan(['cpu'], { env: { INFERPOOL_DEVICES: 'cpu,gpu' } }))).toBe(
      'unknown device "gpu": expected "cpu" or "cuda:N" (from INFERPOOL_DEVICES)',
    )
  })

  it('rejects malformed lists and more than 64 workers', () => {
    expect(invalid(() => plan('all'))).toBe(
      'devices must be "auto" or a non-empty array such as ["cpu"] or ["cuda:0", "cpu"]',
    )
    expect(invalid(() => plan([]))).toMatch(/non-empty array/)
    expect(invalid(() => plan(['cuda:x']))).toBe('unknown device "cuda:x": expected "cpu" or "cuda:N"')
    expect(invalid(() => plan([0]))).toBe('unknown device 0: expected "cpu" or "cuda:N"')
    expect(plan(['cuda:0', 'cuda:1'], { sessionsPerDevice: 32 }).devices).toHaveLength(64)
    expect(invalid(() => plan(['cuda:0', 'cuda:1', 'cpu'], { sessionsPerDevice: 32, cpuWorkers: 1 }))).toBe(
      'a pool has 1 to 64 workers; 3 devices with cpuWorkers 1 and sessionsPerDevice 32 make 65',
    )
  })

  it('counts the GPUs CUDA_VISIBLE_DEVICES shows', () => {
    expect(visibleGpus(undefined)).toBeUndefined()
    expect(visibleGpus('')).toBe(0)
    expect(visibleGpus(' -1 ')).toBe(0)
    expect(visibleGpus('0')).toBe(1)
    expect(visibleGpus('2,3')).toBe(2)
  })
})

describe('memory budgets', () => {
  it('shares each device budget among its workers', () => {
    const devices = ['cuda:0', 'cuda:0', 'cuda:1', 'cpu', 'cpu']
    expect(workerBudgets(devices, { threshold: 0.5 }, 64 * GiB, [80 * GiB, 40 * GiB])).toEqual([
      20 * GiB,
      20 * GiB,
      20 * GiB,
      16 * GiB,
      16 * GiB,
    ])
    expect(workerBudgets(devices, { threshold: 0.5, cpuBytes: 2 * GiB, gpuBytes: 6 * GiB }, 64 * GiB, [])).toEqual([
      3 * GiB,
      3 * GiB,
      6 * GiB,
      GiB,
      GiB,
    ])
  })

  it('leaves a GPU whose memory is unknown unlimited', () => {
    expect(workerBudgets(['cuda:0', 'cuda:1', 'cuda:2'], { threshold: 0.8 }, GiB, [Number.NaN, 0])).toEqual([
      Infinity,
      Infinity,
      Infinity,
    ])
  })

  it('asks for GPU memory only for a GPU without gpuMemoryBytes', () => {
    expect(needsGpuMemory(['cpu'], { threshold: 0.8 })).toBe(false)
    expect(needsGpuMemory(['cpu', 'cuda:0'], { threshold: 0.8 })).toBe(true)
    expect(needsGpuMemory(['cuda:0'], { threshold: 0.8, gpuBytes: GiB })).toBe(false)
  })

  it("reads nvidia-smi's answer in bytes, and never fails asking", async () => {
    expect(parseGpuMemory('81559\n40960\n')).toEqual([81559 * 2 ** 20, 40960 * 2 ** 20])
    const memory = await queryGpuMemory()
    expect(Array.isArray(memory)).toBe(true)
  })
})

describe('per-call options', () => {
  const choice: ModelChoice = { names: ['a', 'b'], defaultModel: 1 }

  it('finds a model by name, the default without one', () => {
    expect(modelIndex(undefined, choice)).toBe(1)
    expect(modelIndex('a', choice)).toBe(0)
    expect(invalid(() => modelIndex('c', choice))).toBe('unknown model "c"; this pool has "a", "b"')
    expect(invalid(() => modelIndex(0, choice))).toMatch(/unknown model 0/)
  })

  it('checks a call and fills in its defaults', () => {
    const signal = new AbortController().signal
    expect(checkCall(['x'], {}, choice)).toEqual({
      model: 1,
      texts: ['x'],
      priority: 'bulk',
      signal: undefined,
      timeoutMs: undefined,
      onProgress: undefined,
    })
    expect(checkCall([], { model: 'a', priority: 'interactive', signal, timeoutMs: 5 }, choice)).toMatchObject({
      model: 0,
      priority: 'interactive',
      signal,
      timeoutMs: 5,
    })
    expect(invalid(() => checkCall('x', {}, choice))).toBe('texts must be an array of strings, got string')
    expect(invalid(() => checkCall(['x', 1], {}, choice))).toBe('texts[1] must be a string, got number')
    expect(invalid(() => checkCall(['x'], null, choice))).toBe('options must be an object')
    expect(invalid(() => checkCall(['x'], { priority: 'high' }, choice))).toMatch(/priority must be "interactive"/)
    expect(invalid(() => checkCall(['x'], { timeoutMs: 0 }, choice))).toMatch(/timeoutMs must be an integer from 1/)
    expect(invalid(() => checkCall(['x'], { signal: {} }, choice))).toBe('signal must be an AbortSignal')
  })

  it('checks the keys of embed, stream, preload and close options', () => {
    expect(invalid(() => checkEmbedOptions({ timeout: 5 }))).toBe('unknown option "timeout": did you mean "timeoutMs"?')
    expect(invalid(() => checkEmbedOptions({ onProgress: 1 }))).toBe('onProgress must be a function')
    expect(() => checkEmbedOptions(null)).not.toThrow()

    expect(checkStreamOptions({}, choice)).toEqual({
      highWaterMark: 256,
      chunkSize: 32,
      model: undefined,
      priority: undefined,
      signal: undefined,
    })
    expect(checkStreamOptions({ highWaterMark: 8, model: 'a' }, choice)).toMatchObject({
      highWaterMark: 8,
      chunkSize: 8,
    })
    expect(invalid(() => checkStreamOptions({ highWaterMark: 0 }, choice))).toMatch(/highWaterMark must be an integer/)
    expect(invalid(() => checkStreamOptions({ priority: 3 }, choice))).toBe(
      'priority must be "interactive" or "bulk", got 3',
    )
    expect(invalid(() => checkStreamOptions({ chunksize: 3 }, choice))).toMatch(/did you mean "chunkSize"/)

    expect(checkPreload('a', {}, choice, 2)).toEqual({ model: 0, workers: undefined })
    expect(checkPreload('b', { workers: [1, 0] }, choice, 2)).toEqual({ model: 1, workers: [1, 0] })
    expect(invalid(() => checkPreload('b', { workers: [2] }, choice, 2))).toBe(
      'workers[0] must be an integer from 0 to 1, got 2',
    )
    expect(invalid(() => checkPreload('b', { workers: 1 }, choice, 2))).toMatch(/workers must be an array/)
    expect(invalid(() => checkPreload('b', { worker: [1] }, choice, 2))).toMatch(/did you mean "workers"/)

    expect(checkCloseOptions({})).toBe(true)
    expect(checkCloseOptions({ drain: false })).toBe(false)
    expect(invalid(() => checkCloseOptions({ drain: 'no' }))).toBe('drain must be a boolean, got "no"')
    expect(invalid(() => checkCloseOptions({ drian: true }))).toMatch(/did you mean "drain"/)
  })
})

describe('misspellings', () => {
  it('counts a swap of neighbours as one edit', () => {
    expect(distance('ab', 'ba')).toBe(1)
    expect(distance('kitten', 'sitting')).toBe(3)
    expect(distance('', 'abc')).toBe(3)
  })

  it('suggests a name only when it is close enough', () => {
    expect(nearest('maxbatchsize', ['maxBatchSize', 'maxBatchTokens'])).toBe('maxBatchSize')
    expect(nearest('zzz', ['model', 'models'])).toBeUndefined()
  })
})
