// Option resolution: the options of `Pool.create` checked against their ranges and known keys
// and resolved to what the native pool is given, and the checks of the per-call options. Pure:
// what the options depend on (the environment, the cores, the GPUs) comes in as arguments, so
// every rule is unit-tested without a native pool.

import { bytes, checkKeys, describe, integer, MAX_INT, pathOption, positiveInt, shown } from './check.js'
import {
  affinity,
  type DeviceEnv,
  MAX_WORKERS,
  type MemorySettings,
  type OnDeviceFailure,
  planDevices,
} from './devices.js'
import type { BindingPoolOptions } from './binding.cjs'
import { PoolError } from './errors.js'
import type {
  ModelKind,
  CacheOptions,
  EmbedOptions,
  ModelSpec,
  Pooling,
  PoolOptions,
  Priority,
  Progress,
  StreamOptions,
} from './types.js'

/** Most ONNX Runtime intra-op threads per session. */
const MAX_INTRA_OP_THREADS = 256
/** Most texts in one batch. */
const MAX_BATCH_SIZE = 4096
/** Most padded tokens in one batch. */
const MAX_BATCH_TOKENS = 1 << 20
/** Longest token sequence a model may be given. */
const MAX_SEQUENCE = 1 << 20
/** Largest model priority, either way. */
const MAX_PRIORITY = 1_000_000
/** Most models in one pool. */
const MAX_MODELS = 64

/** The keys of `Pool.create` options. */
const POOL_KEYS: Record<keyof PoolOptions, true> = {
  model: true,
  models: true,
  defaultModel: true,
  memoryThreshold: true,
  cpuMemoryBytes: true,
  gpuMemoryBytes: true,
  modelIdleTimeoutMs: true,
  maxSwitchesPerHour: true,
  modelSwitchDelayMs: true,
  devices: true,
  sessionsPerDevice: true,
  onDeviceFailure: true,
  cpuWorkers: true,
  intraOpThreads: true,
  maxBatchSize: true,
  maxBatchTokens: true,
  maxQueuedItems: true,
  whenFull: true,
  maxWaitMs: true,
  pooling: true,
  normalize: true,
  maxLength: true,
  cache: true,
  ortLibraryPath: true,
  cacheDir: true,
}

/** The keys of {@link PoolOptions.cache}. */
const CACHE_KEYS: Record<keyof CacheOptions, true> = { maxEntries: true }

/** Most entries of the result cache (a `Map` holds at most 2^24). */
const MAX_CACHE_ENTRIES = 1 << 24

/** The keys of a {@link ModelSpec}. */
const MODEL_KEYS: Record<keyof ModelSpec, true> = {
  path: true,
  kind: true,
  pooling: true,
  normalize: true,
  maxLength: true,
  priority: true,
  devices: true,
  memoryBytes: true,
  preload: true,
}

/** The keys of {@link EmbedOptions}. */
const EMBED_KEYS: Record<keyof EmbedOptions, true> = {
  model: true,
  priority: true,
  signal: true,
  timeoutMs: true,
  onProgress: true,
}

/** The keys of {@link StreamOptions}. */
const STREAM_KEYS: Record<keyof StreamOptions, true> = {
  model: true,
  priority: true,
  signal: true,
  highWaterMark: true,
  chunkSize: true,
}

/** The keys of `Pool.preload` options. */
const PRELOAD_KEYS: Record<'workers', true> = { workers: true }

/** The keys of `Pool.close` options. */
const CLOSE_KEYS: Record<'drain', true> = { drain: true }

/** What option resolution reads from the machine, given by the caller. */
export interface Host {
  /** `INFERPOOL_DEVICES` and `CUDA_VISIBLE_DEVICES`. */
  env: DeviceEnv
  /** Cores this process may use (`os.availableParallelism()`). */
  cores: number
  /** NVIDIA GPUs this process may use; asked only for `devices: 'auto'`. */
  gpuCount: () => number
}

/** One model, checked and with the pool's defaults filled in. */
export interface ResolvedModel {
  /** Its name. */
  name: string
  /** `'default'` (the built-in model, fetched by `Pool.create`) or the path as given. */
  path: string
  /** What it must be; what its folder holds when absent. */
  kind?: ModelKind
  pooling: Pooling
  normalize: boolean
  /** Longest token sequence; the model's own when absent. */
  maxLength?: number
  priority: number
  /** The workers (indices) it may load on; every worker when absent. */
  workers?: number[]
  /** Estimated memory of one loaded copy; the size of its ONNX files when absent. */
  memoryBytes?: number
}

/** The options of `Pool.create`, checked and resolved. */
export interface ResolvedOptions {
  /** The models, in the order given. */
  models: ResolvedModel[]
  /** Index of the model `embed` uses without `{ model }`. */
  defaultModel: number
  /** Models (indices) loaded before `create` resolves: the default one first if not listed. */
  preload: number[]
  /** The device of every worker. */
  devices: string[]
  /** The memory budgets, before they are split among the workers of each device. */
  memory: MemorySettings
  /** `ortLibraryPath`, when given. */
  ortLibraryPath: string | undefined
  /** `cacheDir`, when given. */
  cacheDir: string | undefined
  /** Entries of the result cache; no cache when absent. */
  cacheEntries: number | undefined
  /** The rest, as the native pool takes it. */
  scheduler: Omit<BindingPoolOptions, 'models' | 'preload' | 'devices' | 'memoryBudgets'>
}

/**
 * Checks the options of `Pool.create` and fills in their defaults.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the first option out of range, of the wrong type,
 * or unknown (with the nearest known key).
 */
export function resolveOptions(options: PoolOptions, host: Host): ResolvedOptions {
  checkKeys(options, POOL_KEYS)
  const { cores } = host
  const cpuWorkers = integer('cpuWorkers', options.cpuWorkers, 1, MAX_WORKERS, Math.min(cores, 4))
  const sessionsPerDevice = integer('sessionsPerDevice', options.sessionsPerDevice, 1, MAX_WORKERS, 1)
  const onDeviceFailure: OnDeviceFailure = options.onDeviceFailure ?? 'fail'
  if (onDeviceFailure !== 'fail' && onDeviceFailure !== 'cpu' && onDeviceFailure !== 'unavailable') {
    throw new PoolError(
      'INVALID_INPUT',
      `onDeviceFailure must be "fail", "cpu" or "unavailable", got ${shown(onDeviceFailure)}`,
    )
  }
  const { devices, cpuFallback } = planDevices(
    options.devices,
    { cpuWorkers, sessionsPerDevice, onDeviceFailure },
    host.env,
    host.gpuCount,
  )
  const intraOpThreads = integer(
    'intraOpThreads',
    options.intraOpThreads,
    1,
    MAX_INTRA_OP_THREADS,
    Math.min(MAX_INTRA_OP_THREADS, Math.max(1, Math.floor(cores / cpuWorkers))),
  )
  const maxBatchSize = integer('maxBatchSize', options.maxBatchSize, 1, MAX_BATCH_SIZE, 64)
  const maxBatchTokens = integer('maxBatchTokens', options.maxBatchTokens, 1, MAX_BATCH_TOKENS, 16384)
  const maxQueuedItems = positiveInt('maxQueuedItems', options.maxQueuedItems, 1 << 20)
  const whenFull = options.whenFull ?? 'reject'
  if (whenFull !== 'reject' && whenFull !== 'wait') {
    throw new PoolError('INVALID_INPUT', `whenFull must be "reject" or "wait", got ${shown(whenFull)}`)
  }
  const maxWaitMs = integer('maxWaitMs', options.maxWaitMs, 0, MAX_INT, 0)
  const cpuBytes = bytes('cpuMemoryBytes', options.cpuMemoryBytes)
  const gpuBytes = bytes('gpuMemoryBytes', options.gpuMemoryBytes)
  const threshold = options.memoryThreshold ?? 0.8
  if (typeof threshold !== 'number' || !(threshold > 0 && threshold <= 1)) {
    throw new PoolError('INVALID_INPUT', `memoryThreshold must be a number in (0, 1], got ${shown(threshold)}`)
  }
  const idleTimeoutMs = integer('modelIdleTimeoutMs', options.modelIdleTimeoutMs, 1, MAX_INT, undefined)
  const maxSwitchesPerHour = integer('maxSwitchesPerHour', options.maxSwitchesPerHour, 0, MAX_INT, undefined)
  const switchDelayMs = integer('modelSwitchDelayMs', options.modelSwitchDelayMs, 0, MAX_INT, 100)
  const ortLibraryPath = pathOption('ortLibraryPath', options.ortLibraryPath)
  const cacheDir = pathOption('cacheDir', options.cacheDir)
  const cacheEntries = resolveCache(options.cache)
  const { models, defaultModel, preload } = resolveModels(options, devices)
  return {
    models,
    defaultModel,
    preload,
    devices,
    memory: { threshold, cpuBytes, gpuBytes },
    ortLibraryPath,
    cacheDir,
    cacheEntries,
    scheduler: {
      intraOpThreads,
      maxBatchSize,
      maxBatchTokens,
      maxQueuedItems,
      maxWaitMs,
      cpuFallback,
      tolerateDeviceFailures: onDeviceFailure === 'unavailable',
      waitWhenFull: whenFull === 'wait',
      idleTimeoutMs,
      maxSwitchesPerHour,
      switchDelayMs,
    },
  }
}

/**
 * The result cache's `maxEntries`, or undefined for no cache (`cache` absent or `false`).
 *
 * @throws {PoolError} `INVALID_INPUT` for an unknown key or a `maxEntries` out of range.
 */
function resolveCache(cache: PoolOptions['cache']): number | undefined {
  if (cache === undefined || cache === false) return undefined
  checkKeys(cache, CACHE_KEYS, 'cache')
  return integer('cache.maxEntries', cache.maxEntries, 1, MAX_CACHE_ENTRIES, 10_000)
}

/**
 * The models of `options` in order, each with its settings resolved and its workers among
 * `devices`, the default's index, and the models to preload.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the model and the first option of it that is wrong.
 */
export function resolveModels(
  options: PoolOptions,
  devices: readonly string[],
): { models: ResolvedModel[]; defaultModel: number; preload: number[] } {
  const pooling = options.pooling ?? 'mean'
  if (pooling !== 'mean' && pooling !== 'cls') {
    throw new PoolError('INVALID_INPUT', `pooling must be "mean" or "cls", got ${JSON.stringify(pooling)}`)
  }
  const normalize = options.normalize ?? true
  if (typeof normalize !== 'boolean') throw new PoolError('INVALID_INPUT', 'normalize must be a boolean')
  const maxLength = integer('maxLength', options.maxLength, 2, MAX_SEQUENCE, undefined)
  if (options.models !== undefined && options.model !== undefined) {
    throw new PoolError('INVALID_INPUT', 'give either model or models, not both')
  }
  let entries: [string, string | ModelSpec][]
  if (options.models === undefined) {
    const model = options.model ?? 'default'
    if (typeof model !== 'string' || model.length === 0) {
      throw new PoolError('INVALID_INPUT', 'model must be "default" or a path')
    }
    entries = [['default', model]]
  } else {
    if (options.models === null || typeof options.models !== 'object' || Array.isArray(options.models)) {
      throw new PoolError('INVALID_INPUT', 'models must be an object of { name: path or model spec }')
    }
    entries = Object.entries(options.models)
    if (entries.length === 0 || entries.length > MAX_MODELS) {
      throw new PoolError('INVALID_INPUT', `models must name 1 to ${MAX_MODELS} models, got ${entries.length}`)
    }
  }
  const specs = entries.map(([name, given]) => {
    const spec: ModelSpec = typeof given === 'string' ? { path: given } : given
    const where = `models[${JSON.stringify(name)}]`
    if (spec === null || typeof spec !== 'object' || typeof spec.path !== 'string' || spec.path.length === 0) {
      throw new PoolError('INVALID_INPUT', `${where} must be "default", a path, or { path, ... }`)
    }
    checkKeys(spec, MODEL_KEYS, where)
    if (spec.kind !== undefined && spec.kind !== 'embedding' && spec.kind !== 'seq2seq') {
      throw new PoolError(
        'INVALID_INPUT',
        `${where}.kind must be "embedding" or "seq2seq", got ${JSON.stringify(spec.kind)}`,
      )
    }
    const own = spec.pooling ?? pooling
    if (own !== 'mean' && own !== 'cls') {
      throw new PoolError('INVALID_INPUT', `${where}.pooling must be "mean" or "cls", got ${JSON.stringify(own)}`)
    }
    if (spec.normalize !== undefined && typeof spec.normalize !== 'boolean') {
      throw new PoolError('INVALID_INPUT', `${where}.normalize must be a boolean`)
    }
    const priority = integer(`${where}.priority`, spec.priority, -MAX_PRIORITY, MAX_PRIORITY, 0)
    if (
      spec.devices !== undefined &&
      (!Array.isArray(spec.devices) || spec.devices.length === 0 || spec.devices.length > MAX_WORKERS)
    ) {
      throw new PoolError('INVALID_INPUT', `${where}.devices must be an array of 1 to ${MAX_WORKERS} devices`)
    }
    if (spec.preload !== undefined && typeof spec.preload !== 'boolean') {
      throw new PoolError('INVALID_INPUT', `${where}.preload must be a boolean`)
    }
    const model: ResolvedModel = {
      name,
      path: spec.path,
      ...(spec.kind === undefined ? {} : { kind: spec.kind }),
      pooling: own,
      normalize: spec.normalize ?? normalize,
      maxLength: integer(`${where}.maxLength`, spec.maxLength, 2, MAX_SEQUENCE, maxLength),
      priority,
      workers: spec.devices && affinity(name, spec.devices, devices),
      memoryBytes: bytes(`${where}.memoryBytes`, spec.memoryBytes),
    }
    return { model, preload: spec.preload }
  })
  const models = specs.map((s) => s.model)
  const wanted = options.defaultModel ?? (models.some((m) => m.name === 'default') ? 'default' : models[0].name)
  const defaultModel = models.findIndex((m) => m.name === wanted)
  if (defaultModel < 0) {
    throw new PoolError('INVALID_INPUT', `defaultModel ${JSON.stringify(wanted)} is not one of the models`)
  }
  const preload = specs.flatMap((s, index) => ((s.preload ?? index === defaultModel) ? [index] : []))
  if (!preload.includes(defaultModel)) preload.unshift(defaultModel)
  return { models, defaultModel, preload }
}

/** The models a call may name, and the one it gets without naming one. */
export interface ModelChoice {
  /** Model names, by index. */
  names: readonly string[]
  /** Index of the default model. */
  defaultModel: number
}

/**
 * The index of model `name`, or of the default model when `name` is undefined.
 *
 * @throws {PoolError} `INVALID_INPUT` for a name that is not one of the models.
 */
export function modelIndex(name: unknown, choice: ModelChoice): number {
  if (name === undefined) return choice.defaultModel
  const index = typeof name === 'string' ? choice.names.indexOf(name) : -1
  if (index < 0) {
    throw new PoolError(
      'INVALID_INPUT',
      `unknown model ${JSON.stringify(name)}; this pool has ${choice.names.map((n) => JSON.stringify(n)).join(', ')}`,
    )
  }
  return index
}

/**
 * Checks the keys of `Pool.embed` options, `timeoutMs` and `onProgress`. Options that are not
 * an object are left to {@link checkCall}.
 *
 * @throws {PoolError} `INVALID_INPUT` for an unknown key or a value out of range.
 */
export function checkEmbedOptions(options: unknown): void {
  if (options === null || typeof options !== 'object') return
  checkKeys(options, EMBED_KEYS)
  const { timeoutMs, onProgress } = options as EmbedOptions
  if (timeoutMs !== undefined) positiveInt('timeoutMs', timeoutMs, 0)
  if (onProgress !== undefined && typeof onProgress !== 'function') {
    throw new PoolError('INVALID_INPUT', 'onProgress must be a function')
  }
}

/** One checked call of `Pool.embed`, as it is handed to the native pool. */
export interface Call {
  /** Model index. */
  model: number
  texts: readonly string[]
  priority: Priority
  signal: AbortSignal | undefined
  timeoutMs: number | undefined
  onProgress: ((progress: Progress) => void) | undefined
}

/**
 * Checks the texts and the options of one call (of `embed`, or a part of a stream).
 *
 * @throws {PoolError} `INVALID_INPUT` when `texts` is not an array of strings or an option is
 * malformed.
 */
export function checkCall(texts: unknown, options: unknown, choice: ModelChoice): Call {
  if (!Array.isArray(texts)) {
    throw new PoolError('INVALID_INPUT', `texts must be an array of strings, got ${describe(texts)}`)
  }
  for (let i = 0; i < texts.length; i++) {
    if (typeof texts[i] !== 'string') {
      throw new PoolError('INVALID_INPUT', `texts[${i}] must be a string, got ${describe(texts[i])}`)
    }
  }
  if (options === null || typeof options !== 'object') {
    throw new PoolError('INVALID_INPUT', 'options must be an object')
  }
  const { priority = 'bulk', signal, timeoutMs, onProgress } = options as EmbedOptions
  const model = modelIndex((options as EmbedOptions).model, choice)
  if (priority !== 'interactive' && priority !== 'bulk') {
    throw new PoolError('INVALID_INPUT', `priority must be "interactive" or "bulk", got ${JSON.stringify(priority)}`)
  }
  if (timeoutMs !== undefined) positiveInt('timeoutMs', timeoutMs, 0)
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new PoolError('INVALID_INPUT', 'signal must be an AbortSignal')
  }
  return { model, texts, priority, signal, timeoutMs, onProgress }
}

/** The options of `Pool.embedStream`, checked, with their defaults. */
export interface StreamSettings {
  highWaterMark: number
  chunkSize: number
  /** The model's name, as given. */
  model: string | undefined
  priority: Priority | undefined
  signal: AbortSignal | undefined
}

/**
 * Checks the options of `Pool.embedStream` and fills in `highWaterMark` (256) and `chunkSize`
 * (32, at most `highWaterMark`).
 *
 * @throws {PoolError} `INVALID_INPUT` for an unknown key or a malformed value.
 */
export function checkStreamOptions(options: unknown, choice: ModelChoice): StreamSettings {
  checkKeys(options, STREAM_KEYS)
  const given = options as StreamOptions
  const highWaterMark = positiveInt('highWaterMark', given.highWaterMark, 256)
  const chunkSize = Math.min(positiveInt('chunkSize', given.chunkSize, 32), highWaterMark)
  const { model, priority, signal } = given
  modelIndex(model, choice)
  if (priority !== undefined && priority !== 'interactive' && priority !== 'bulk') {
    throw new PoolError('INVALID_INPUT', `priority must be "interactive" or "bulk", got ${shown(priority)}`)
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new PoolError('INVALID_INPUT', 'signal must be an AbortSignal')
  }
  return { highWaterMark, chunkSize, model, priority, signal }
}

/**
 * Checks `Pool.preload`'s model name and options: `workers` are ids below `workerCount`.
 *
 * @throws {PoolError} `INVALID_INPUT` for an unknown model, key or worker.
 */
export function checkPreload(
  name: unknown,
  options: unknown,
  choice: ModelChoice,
  workerCount: number,
): { model: number; workers: number[] | undefined } {
  const model = modelIndex(name, choice)
  checkKeys(options, PRELOAD_KEYS)
  const workers: unknown = (options as { workers?: unknown }).workers
  if (workers !== undefined) {
    if (!Array.isArray(workers) || workers.length > MAX_WORKERS) {
      throw new PoolError(
        'INVALID_INPUT',
        `workers must be an array of at most ${MAX_WORKERS} worker ids, got ${Array.isArray(workers) ? `${workers.length} ids` : shown(workers)}`,
      )
    }
    workers.forEach((worker, i) => integer(`workers[${i}]`, worker, 0, workerCount - 1, 0))
  }
  return { model, workers: workers as number[] | undefined }
}

/**
 * Checks `Pool.close`'s options and returns `drain` (default `true`).
 *
 * @throws {PoolError} `INVALID_INPUT` for an unknown key or a `drain` that is not a boolean.
 */
export function checkCloseOptions(options: unknown): boolean {
  checkKeys(options, CLOSE_KEYS)
  const drain = (options as { drain?: unknown }).drain ?? true
  if (typeof drain !== 'boolean') throw new PoolError('INVALID_INPUT', `drain must be a boolean, got ${shown(drain)}`)
  return drain
}
