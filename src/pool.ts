import { execFileSync } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { readdirSync } from 'node:fs'
import { availableParallelism, totalmem } from 'node:os'
import { resolve } from 'node:path'

import type {
  BindingEvent,
  BindingModelHistograms,
  BindingModelSpec,
  BindingPool,
  BindingPriority,
  BindingStatus,
} from './binding.cjs'
import { PoolError, fromNative } from './errors.js'
import { type Family, type HistogramData, type Labels, exposition, quantile } from './metrics.js'
import { defaultCacheDir, ensureDefaultModel } from './model.js'
import { native } from './native.js'
import { type RuntimeInfo, initRuntime } from './runtime.js'

/** How token states become one vector per text. */
export type Pooling = 'mean' | 'cls'

/** Queue class of a call: `interactive` is served before `bulk`; bulk is never starved. */
export type Priority = 'interactive' | 'bulk'

/** Options of {@link Pool.embed}. */
export interface EmbedOptions {
  /** Name of the model to use (a key of {@link PoolOptions.models}). Default: the default model. */
  model?: string
  /** `'interactive'` calls are served before `'bulk'` ones (the default); bulk still progresses. */
  priority?: Priority
  /**
   * Aborting rejects the call with `ABORTED` at once; its texts that have not started are not
   * run.
   */
  signal?: AbortSignal
  /**
   * Rejects the call with `TIMEOUT` when it has not finished within this many milliseconds; its
   * texts that have not started by then are not run.
   */
  timeoutMs?: number
  /**
   * Called each time another 256 texts of the call are done, and once when all are (before the
   * call resolves). The call stays one call: admitted or refused as a whole, failed as a whole.
   * A throw from it rejects the call with that error once the call settles.
   */
  onProgress?: (progress: Progress) => void
}

/** What {@link EmbedOptions.onProgress} reports. */
export interface Progress {
  /** Texts embedded so far. */
  done: number
  /** Texts in the call. */
  total: number
  /** Texts per second since the call started. */
  itemsPerSecond: number
}

/** Options of {@link Pool.embedStream}. */
export interface StreamOptions extends Omit<EmbedOptions, 'onProgress' | 'timeoutMs'> {
  /**
   * Most texts read from the source and not yet taken by the consumer. Memory stays bounded by
   * it however long the source is. Default 256.
   */
  highWaterMark?: number
  /** Texts per call handed to the pool. Default: 32, at most `highWaterMark`. */
  chunkSize?: number
}

/** One result of {@link Pool.embedStream}. */
export interface StreamItem {
  /** Position of the text in the source. */
  index: number
  /** Its embedding. */
  embedding: Float32Array
}

/** What a worker is doing. */
export type WorkerState = 'idle' | 'busy' | 'loading' | 'backing-off' | 'failed' | 'stopped'

/** One worker in {@link PoolStatus}. */
export interface WorkerStatus {
  /** Worker index. */
  id: number
  /** `'cpu'` or `'cuda:N'`, as configured. */
  device: string
  /** The execution provider it runs on: `'cuda'`, or `'cpu'` (also after a fallback). */
  provider: 'cpu' | 'cuda'
  /** Why a GPU worker runs on the CPU (`onDeviceFailure: 'cpu'`), absent otherwise. */
  fallback?: string
  /** Why a worker's device could not start (`onDeviceFailure: 'unavailable'`; its state is `'failed'`). */
  failure?: string
  /**
   * What it is doing now: `'loading'` a model, `'backing-off'` after a failed batch, `'failed'`
   * after `maxAttempts` failed batches in a row (it still retries after each back-off).
   */
  state: WorkerState
  /** Names of the models it holds. */
  loadedModels: string[]
  /** Models it loaded. */
  loads: number
  /** Loads that evicted another model (capped by `maxSwitchesPerHour`). */
  switches: number
  /** Models it evicted. */
  evictions: number
  /** Estimated memory of the models it holds, bytes. */
  memoryUsedBytes: number
  /** Its share of its device's memory budget, bytes (`Infinity` = unlimited). */
  memoryBudgetBytes: number
  /** Texts it embedded. */
  items: number
  /** Batches it ran (successful or not). */
  batches: number
  /** Batches that failed (their texts were retried elsewhere or reported). */
  errors: number
  /** Batches it stole from other workers. */
  steals: number
  /** Mean texts per batch. */
  meanBatchSize: number
  /** Its current adaptive budget, padded tokens per batch. */
  tokenBudget: number
  /** Time spent running batches, milliseconds. */
  busyMs: number
  /** Share of the pool's lifetime spent running batches, 0–100. */
  utilisation: number
  /** Measured throughput (0 until its first batch). */
  itemsPerSecond: number
}

/** What {@link Pool.status} returns. */
export interface PoolStatus {
  /** Texts accepted and not yet embedded (queued or running). */
  outstanding: number
  /** Texts waiting for a worker. */
  queued: number
  /** Texts running now. */
  inFlight: number
  /** Texts of calls waiting for room (`whenFull: 'wait'`), not yet accepted. */
  waiting: number
  /** Texts embedded since the pool started. */
  items: number
  /** Mean texts per second since the pool started. */
  itemsPerSecond: number
  /** Per worker. */
  workers: WorkerStatus[]
  /** Per model, by name. */
  models: Record<string, ModelStatus>
  /** The default model's path and output width. */
  model: { path: string; dimension: number; maxLength: number }
  /** The ONNX Runtime library in use. */
  runtime: RuntimeInfo
}

/** One model in {@link PoolStatus}. */
export interface ModelStatus {
  /** Its ONNX file or folder. */
  path: string
  /** Width of its embeddings; `null` until it has been loaded once. */
  dimension: number | null
  /** Longest token sequence fed to it. */
  maxLength: number
  /** Its priority. */
  priority: number
  /** Estimated memory of one loaded copy, bytes. */
  memoryBytes: number
  /** Ids of the workers holding it now. */
  loadedOn: number[]
  /** Texts waiting for a worker. */
  queued: number
  /** Texts running now. */
  inFlight: number
  /** Texts embedded. */
  items: number
  /** Loads on any worker. */
  loads: number
  /** Unloads on any worker: idle, requested or evicted. */
  unloads: number
  /** Evictions to make room for another model. */
  evictions: number
  /**
   * Latency of its calls inside the native pool (submitted to answered), milliseconds,
   * estimated from the histogram buckets; `null` before the first call.
   */
  latencyMs: { p50: number | null; p99: number | null }
}

/** A model of {@link PoolOptions.models}. */
export interface ModelSpec {
  /**
   * `'default'` for the built-in all-MiniLM-L6-v2, or a path to a Hugging Face style folder or
   * an `.onnx` file inside one.
   */
  path: string
  /** What it computes. Only `'embedding'` is supported. */
  kind?: 'embedding'
  /** `'mean'` over real tokens (default) or `'cls'` (first token). */
  pooling?: Pooling
  /** Scale every embedding to unit length. Default `true`. */
  normalize?: boolean
  /** Longest token sequence fed to it. Default: the model's own. */
  maxLength?: number
  /**
   * Integer; a higher priority is served first when workers are scarce and is evicted last (a
   * model never evicts one of higher priority). Default 0.
   */
  priority?: number
  /**
   * Devices it may load on (`'cpu'`, `'cuda:N'`, or `'cuda'` for every GPU). Default: every
   * device of the pool.
   */
  devices?: string[]
  /**
   * Estimated memory of one loaded copy, bytes, counted against the worker's budget. Default:
   * the size of its ONNX files.
   */
  memoryBytes?: number
  /**
   * Load it on every worker it may use when the pool starts. Default: `true` for the default
   * model, `false` for the others (they load on demand).
   */
  preload?: boolean
}

/** Something that happened to a model or a worker, as emitted by {@link Pool}. */
export interface PoolEvent {
  /** The event name it was emitted under. */
  type: PoolEventType
  /** The worker it happened on. */
  worker: number
  /** That worker's device. */
  device: string
  /** The model's name, for model events. */
  model?: string
  /** `model-unloaded`: `'idle'` (unused for `modelIdleTimeoutMs`) or `'requested'` ({@link Pool.unload}). */
  reason?: 'idle' | 'requested'
  /** `model-evicted`: the model loaded in its place. */
  forModel?: string
  /** `model-load-failed` and `worker-failed`: what went wrong. */
  error?: PoolError
  /** `model-loaded`: how long the load took, milliseconds. */
  tookMs?: number
}

/** Event names of {@link Pool}. */
export type PoolEventType =
  'model-loaded' | 'model-unloaded' | 'model-evicted' | 'model-load-failed' | 'worker-failed' | 'worker-recovered'

/** One validated call of {@link Pool.embed}, as it is handed to the native pool. */
interface Call {
  /** Model index. */
  model: number
  texts: readonly string[]
  priority: Priority
  signal: AbortSignal | undefined
  onProgress: ((progress: Progress) => void) | undefined
}

/** What a pool keeps of a model. */
interface ModelEntry {
  name: string
  index: number
  path: string
  maxLength: number
}

/** What a pool keeps of its options. */
interface Settings {
  models: ModelEntry[]
  /** Index of the model `embed` uses without `{ model }`. */
  defaultModel: number
  devices: string[]
}

/** Texts between two `onProgress` reports of one call. */
const PROGRESS_PART = 256

/** Options of {@link Pool.create}. Every field is optional. */
export interface PoolOptions {
  /**
   * `'default'` (or omitted) for the built-in all-MiniLM-L6-v2, or a path to a Hugging Face
   * style folder (`tokenizer.json`, `config.json`, `model.onnx` or `onnx/*.onnx`) or to an
   * `.onnx` file inside one.
   */
  model?: string
  /**
   * Several models by name, each a path (as `model`) or a {@link ModelSpec}: `embed(texts, {
   * model: name })` picks one. Models load on demand on the workers that get their work, and
   * are evicted under the memory budget (see `memoryThreshold`). Exclusive with `model`.
   */
  models?: Record<string, string | ModelSpec>
  /** The model `embed` uses without `{ model }`. Default: `'default'` if named, else the first. */
  defaultModel?: string
  /**
   * Fraction of each device's memory that loaded models may fill (by their estimates), shared
   * evenly by the workers on the device; a load that would exceed a worker's share evicts the
   * least valuable model first (lowest priority, then lowest usage: a count of texts embedded
   * that halves every minute, so recent and frequent use both count). GPU memory is read from
   * `nvidia-smi`; when it cannot be, GPUs are unlimited. Default 0.8.
   */
  memoryThreshold?: number
  /** The CPU's budget in bytes, shared by the CPU workers. Default: `memoryThreshold` × RAM. */
  cpuMemoryBytes?: number
  /** Each GPU's budget in bytes. Default: `memoryThreshold` × its memory. */
  gpuMemoryBytes?: number
  /** A model unused this long on a worker is unloaded there (milliseconds). Default: never. */
  modelIdleTimeoutMs?: number
  /**
   * Most loads that evict another model, per worker in any hour. Once reached, the worker keeps
   * what it holds; work for other models waits for a worker with room or a switch to spare
   * (a draining {@link Pool.close} ignores the cap). Default: unlimited.
   */
  maxSwitchesPerHour?: number
  /**
   * How long work for a model no worker holds may wait, while workers are busy with another
   * model of the same priority, before one of them switches to it (milliseconds). Default 100.
   */
  modelSwitchDelayMs?: number
  /**
   * Devices to run on: `'cpu'` and/or `'cuda:N'`, or `'auto'`: every NVIDIA GPU the machine shows
   * (`CUDA_VISIBLE_DEVICES`, else `/proc/driver/nvidia/gpus`), each falling back to the CPU if it
   * cannot run, or the CPU when there is none. The `INFERPOOL_DEVICES` environment variable
   * (`auto` or a comma-separated list) overrides this option. Default `['cpu']`.
   */
  devices?: 'auto' | string[]
  /** Sessions (worker threads) per GPU: several overlap copies and compute. Default 1. */
  sessionsPerDevice?: number
  /**
   * What a GPU worker does when its session cannot be built (no CUDA provider libraries, no
   * driver, a bad device id): `'fail'` (default for a device list) rejects {@link Pool.create}
   * with `DEVICE_UNAVAILABLE`; `'cpu'` (always, with `devices: 'auto'`) runs that worker on the
   * CPU instead, and {@link Pool.status} says why in its `fallback`; `'unavailable'` marks that
   * worker `'failed'` (with the reason in its `failure`) and starts without it, unless a model
   * is left with no worker.
   */
  onDeviceFailure?: 'fail' | 'cpu' | 'unavailable'
  /**
   * Worker threads on the CPU, each with its own ONNX Runtime session. Default: the number of
   * cores, at most 4.
   */
  cpuWorkers?: number
  /** ONNX Runtime intra-op threads per session. Default: cores ÷ CPU workers (at least 1). */
  intraOpThreads?: number
  /** Most texts in one batch. Default 64. */
  maxBatchSize?: number
  /**
   * Most padded tokens (longest text × texts) in one batch, and the ceiling of each worker's
   * adaptive budget. Default 16384.
   */
  maxBatchTokens?: number
  /**
   * Most texts accepted and not yet embedded, over all calls. What happens to a call beyond it
   * is `whenFull`'s choice. Default 1,048,576.
   */
  maxQueuedItems?: number
  /**
   * What a call that would exceed `maxQueuedItems` does: `'reject'` (default) fails it at once
   * with `OVERLOADED`, so a service can shed load; `'wait'` holds it (in call order) until
   * earlier calls finish and it fits. A waiting call still honours its `signal` and `timeoutMs`,
   * and a call larger than `maxQueuedItems` on its own is rejected with `OVERLOADED` either way.
   */
  whenFull?: 'reject' | 'wait'
  /**
   * How long an idle worker may hold a partial batch open for more calls to arrive, in
   * milliseconds. Default 0: run whatever is queued at once.
   */
  maxWaitMs?: number
  /** `'mean'` over real tokens (default) or `'cls'` (first token). */
  pooling?: Pooling
  /** Scale every embedding to unit length. Default `true`. */
  normalize?: boolean
  /**
   * Longest token sequence fed to the model; longer texts are truncated. Default: the model's
   * own (the truncation in `tokenizer.json`, else `model_max_length`, capped by
   * `max_position_embeddings`).
   */
  maxLength?: number
  /**
   * Absolute path of the ONNX Runtime library. Default: `ORT_DYLIB_PATH`, else the library in
   * the `onnxruntime-node` package.
   */
  ortLibraryPath?: string
  /** Where the default model is cached. Default: `INFERPOOL_CACHE_DIR` or the user cache folder. */
  cacheDir?: string
}

/** Largest count or duration in milliseconds an option takes (the longest timer Node runs). */
const MAX_INT = 2 ** 31 - 1
/** Most workers in one pool (the native pool's limit). */
const MAX_WORKERS = 64
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

/**
 * `value` when it is an integer from `min` to `max`, `fallback` when it is undefined.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the option and its range.
 */
function integer<F extends number | undefined>(name: string, value: unknown, min: number, max: number, fallback: F) {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new PoolError('INVALID_INPUT', `${name} must be an integer from ${min} to ${max}, got ${shown(value)}`)
  }
  return value
}

/** An integer from 1 to 2^31 - 1 (a count or a duration in milliseconds). */
function positiveInt(name: string, value: unknown, fallback: number): number {
  return integer(name, value, 1, MAX_INT, fallback)
}

/** A finite number of bytes, or undefined. */
function bytes(name: string, value: unknown): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number' || !(value >= 0 && value <= Number.MAX_SAFE_INTEGER)) {
    throw new PoolError(
      'INVALID_INPUT',
      `${name} must be a finite number of bytes from 0 to ${Number.MAX_SAFE_INTEGER}, got ${shown(value)}`,
    )
  }
  return value
}

/** A non-empty string, or undefined. */
function pathOption(name: string, value: unknown): string | undefined {
  if (value !== undefined && (typeof value !== 'string' || value.length === 0)) {
    throw new PoolError('INVALID_INPUT', `${name} must be a path, got ${shown(value)}`)
  }
  return value
}

/**
 * Checks that `options` is an object whose keys are all in `known`.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the first unknown key and the nearest known one.
 */
function checkKeys(options: unknown, known: Record<string, true>, where = 'options'): void {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new PoolError('INVALID_INPUT', `${where} must be an object, got ${shown(options)}`)
  }
  for (const key of Object.keys(options)) {
    if (Object.hasOwn(known, key)) continue
    const names = Object.keys(known)
    const near = nearest(key, names)
    throw new PoolError(
      'INVALID_INPUT',
      `unknown option ${JSON.stringify(key)}${where === 'options' ? '' : ` in ${where}`}: ` +
        (near === undefined ? `expected one of ${names.join(', ')}` : `did you mean ${JSON.stringify(near)}?`),
    )
  }
}

/** The name in `names` closest to `key`, when one is close enough to be a misspelling of it. */
function nearest(key: string, names: string[]): string | undefined {
  let best: string | undefined
  let bestDistance = Math.max(2, Math.floor(key.length / 3)) + 1
  for (const name of names) {
    const d = distance(key.toLowerCase(), name.toLowerCase())
    if (d < bestDistance) [best, bestDistance] = [name, d]
  }
  return best
}

/** Edit distance of `a` and `b`: insertions, deletions, substitutions and swaps of neighbours. */
function distance(a: string, b: string): number {
  // Three rows of the dynamic-programming table: two back (for swaps), previous, current.
  let before: number[] = []
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      let d = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, before[j - 2] + 1)
      current.push(d)
    }
    ;[before, previous] = [previous, current]
  }
  return previous[b.length]
}

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
  ortLibraryPath: true,
  cacheDir: true,
}

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

/** The keys of {@link Pool.preload} options. */
const PRELOAD_KEYS: Record<'workers', true> = { workers: true }

/** The keys of {@link Pool.close} options. */
const CLOSE_KEYS: Record<'drain', true> = { drain: true }

/**
 * Checks the keys of {@link Pool.embed} options and the values `#embed` does not check itself.
 *
 * @throws {PoolError} `INVALID_INPUT` for an unknown key or a value out of range.
 */
export function checkEmbedOptions(options: unknown): void {
  checkKeys(options, EMBED_KEYS)
  const { timeoutMs } = options as EmbedOptions
  if (timeoutMs !== undefined) positiveInt('timeoutMs', timeoutMs, 0)
}

const DEVICE = /^(cpu|cuda(:\d+)?)$/

/** NVIDIA GPUs this process may use, as CUDA numbers them. */
function cudaDeviceCount(): number {
  const visible = process.env.CUDA_VISIBLE_DEVICES?.trim()
  if (visible !== undefined) return visible === '' || visible.startsWith('-') ? 0 : visible.split(',').length
  try {
    return readdirSync('/proc/driver/nvidia/gpus').length
  } catch {
    return 0
  }
}

/** The device of every worker, and whether a GPU worker falls back to the CPU. */
function workerDevices(
  option: unknown,
  cpuWorkers: number,
  sessionsPerDevice: number,
  onDeviceFailure: 'fail' | 'cpu' | 'unavailable',
): { devices: string[]; cpuFallback: boolean } {
  const fromEnv = process.env.INFERPOOL_DEVICES?.trim()
  let list = fromEnv ? (fromEnv === 'auto' ? 'auto' : fromEnv.split(',').map((d) => d.trim())) : (option ?? ['cpu'])
  let cpuFallback = onDeviceFailure === 'cpu'
  if (list === 'auto') {
    const gpus = cudaDeviceCount()
    list = gpus === 0 ? ['cpu'] : Array.from({ length: gpus }, (_, i) => `cuda:${i}`)
    cpuFallback = true
  }
  if (!Array.isArray(list) || list.length === 0) {
    throw new PoolError(
      'INVALID_INPUT',
      'devices must be "auto" or a non-empty array such as ["cpu"] or ["cuda:0", "cpu"]' +
        (fromEnv ? ` (INFERPOOL_DEVICES is ${JSON.stringify(fromEnv)})` : ''),
    )
  }
  // Count the workers before making a list of them: the count may be anything.
  let count = 0
  for (const device of list) {
    if (typeof device !== 'string' || !DEVICE.test(device)) {
      throw new PoolError(
        'INVALID_INPUT',
        `unknown device ${shown(device)}: expected "cpu" or "cuda:N"` + (fromEnv ? ` (from INFERPOOL_DEVICES)` : ''),
      )
    }
    count += device === 'cpu' ? cpuWorkers : sessionsPerDevice
    if (count > MAX_WORKERS) {
      throw new PoolError(
        'INVALID_INPUT',
        `a pool has 1 to ${MAX_WORKERS} workers; ${list.length} devices with cpuWorkers ${cpuWorkers} and ` +
          `sessionsPerDevice ${sessionsPerDevice} make ${list.reduce((n: number, d: unknown) => n + (d === 'cpu' ? cpuWorkers : sessionsPerDevice), 0)}` +
          (fromEnv ? ` (INFERPOOL_DEVICES is ${JSON.stringify(fromEnv)})` : ''),
      )
    }
  }
  const workers = (list as string[]).flatMap((device) =>
    Array<string>(device === 'cpu' ? cpuWorkers : sessionsPerDevice).fill(device === 'cuda' ? 'cuda:0' : device),
  )
  return { devices: workers, cpuFallback }
}

type ResolvedSpec = Omit<ModelSpec, 'pooling' | 'normalize'> & { pooling: Pooling; normalize: boolean }

/** The models of `options` in order, each with its settings resolved, and the default's index. */
function modelSpecs(options: PoolOptions): { specs: [string, ResolvedSpec][]; defaultIndex: number } {
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
    if (entries.length === 0 || entries.length > 64) {
      throw new PoolError('INVALID_INPUT', `models must name 1 to 64 models, got ${entries.length}`)
    }
  }
  const specs = entries.map(([name, given]): [string, ResolvedSpec] => {
    const spec: ModelSpec = typeof given === 'string' ? { path: given } : given
    const where = `models[${JSON.stringify(name)}]`
    if (spec === null || typeof spec !== 'object' || typeof spec.path !== 'string' || spec.path.length === 0) {
      throw new PoolError('INVALID_INPUT', `${where} must be "default", a path, or { path, ... }`)
    }
    checkKeys(spec, MODEL_KEYS, where)
    if (spec.kind !== undefined && spec.kind !== 'embedding') {
      throw new PoolError('INVALID_INPUT', `${where}.kind must be "embedding", got ${JSON.stringify(spec.kind)}`)
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
    return [
      name,
      {
        ...spec,
        pooling: own,
        normalize: spec.normalize ?? normalize,
        maxLength: integer(`${where}.maxLength`, spec.maxLength, 2, MAX_SEQUENCE, maxLength),
        priority,
        memoryBytes: bytes(`${where}.memoryBytes`, spec.memoryBytes),
      },
    ]
  })
  const wanted = options.defaultModel ?? (specs.some(([n]) => n === 'default') ? 'default' : specs[0][0])
  const defaultIndex = specs.findIndex(([n]) => n === wanted)
  if (defaultIndex < 0) {
    throw new PoolError('INVALID_INPUT', `defaultModel ${JSON.stringify(wanted)} is not one of the models`)
  }
  return { specs, defaultIndex }
}

/** The workers (indices) whose device is one of `allowed`. */
function affinity(name: string, allowed: string[], devices: string[]): number[] {
  for (const device of allowed) {
    if (typeof device !== 'string' || !DEVICE.test(device)) {
      throw new PoolError(
        'INVALID_INPUT',
        `models[${JSON.stringify(name)}].devices: unknown device ${JSON.stringify(device)}`,
      )
    }
  }
  const workers = devices.flatMap((device, worker) =>
    allowed.some((a) => a === device || (a === 'cuda' && device.startsWith('cuda'))) ? [worker] : [],
  )
  if (workers.length === 0) {
    throw new PoolError(
      'INVALID_INPUT',
      `model ${JSON.stringify(name)} may only use ${allowed.join(', ')}, but the pool runs on ${[...new Set(devices)].join(', ')}`,
    )
  }
  return workers
}

/** Total memory of each GPU, bytes, by CUDA index, as `nvidia-smi` reports it (empty if it cannot). */
function gpuMemory(): number[] {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=memory.total', '--format=csv,noheader,nounits'], {
      encoding: 'utf8',
      timeout: 5000,
      stdio: ['ignore', 'pipe', 'ignore'],
    })
    return out
      .trim()
      .split('\n')
      .map((line) => Number.parseFloat(line) * 2 ** 20)
  } catch {
    return []
  }
}

/** Each worker's share of its device's memory budget, bytes (`Infinity` = unlimited). */
function workerBudgets(devices: string[], threshold: number, cpuBytes?: number, gpuBytes?: number): number[] {
  const sharing = new Map<string, number>()
  for (const device of devices) sharing.set(device, (sharing.get(device) ?? 0) + 1)
  const gpus = devices.some((d) => d !== 'cpu') && gpuBytes === undefined ? gpuMemory() : []
  return devices.map((device) => {
    let budget: number
    if (device === 'cpu') budget = cpuBytes ?? threshold * totalmem()
    else {
      const total = gpus[Number(device.slice('cuda:'.length))]
      budget = gpuBytes ?? (Number.isFinite(total) && total > 0 ? threshold * total : Infinity)
    }
    return budget / (sharing.get(device) ?? 1)
  })
}

const asyncDispose: typeof Symbol.asyncDispose =
  Symbol.asyncDispose ?? (Symbol.for('nodejs.asyncDispose') as typeof Symbol.asyncDispose)

/**
 * A pool of Rust worker threads that tokenizes, batches across every caller, runs ONNX Runtime
 * and returns embeddings without blocking the event loop.
 *
 * ```ts
 * const pool = await Pool.create()
 * const [a, b] = await pool.embed(['A man is eating food.', 'A man is eating a piece of bread.'])
 * await pool.close()
 * ```
 */
export class Pool extends EventEmitter<Record<PoolEventType, [PoolEvent]>> {
  readonly #native: BindingPool
  #closed = false
  /** What {@link Pool.close} returns. */
  #closing: Promise<void> | undefined
  /** The cancelling native close, once there is one (a draining close may be escalated to it). */
  #cancelling: Promise<void> | undefined
  /** Calls handed to the native pool and not yet settled (a drain waits for them). */
  readonly #pending = new Set<Promise<unknown>>()
  /** When the pool started, for rates in {@link Pool.status}. */
  readonly #started = performance.now()
  readonly #settings: Settings

  /** Width of the default model's embeddings (384 for the built-in model). */
  readonly dimension: number
  /** Longest token sequence fed to the default model; longer texts are truncated. */
  readonly maxLength: number
  /** Path of the default model's ONNX file or folder. */
  readonly modelPath: string
  /** The ONNX Runtime library in use. */
  readonly runtime: RuntimeInfo

  private constructor(binding: BindingPool, runtime: RuntimeInfo, settings: Settings) {
    super()
    this.#native = binding
    this.#settings = settings
    const model = settings.models[settings.defaultModel]
    this.dimension = binding.dimension(model.index) ?? 0
    this.maxLength = model.maxLength
    this.modelPath = model.path
    this.runtime = runtime
  }

  /**
   * Loads ONNX Runtime, reads every model's tokenizer, starts the workers and loads the
   * preloaded models (the default one at least); resolves once they are ready. Listen for
   * {@link PoolEventType} events with `pool.on(...)`.
   *
   * @throws {PoolError} `INVALID_INPUT`, `MODEL_NOT_FOUND`, `MODEL_INVALID`,
   * `MODEL_FETCH_FAILED`, `ORT_LOAD_FAILED`, `DEVICE_UNAVAILABLE`.
   */
  static async create(options: PoolOptions = {}): Promise<Pool> {
    checkKeys(options, POOL_KEYS)
    const cores = availableParallelism()
    const cpuWorkers = integer('cpuWorkers', options.cpuWorkers, 1, MAX_WORKERS, Math.min(cores, 4))
    const sessionsPerDevice = integer('sessionsPerDevice', options.sessionsPerDevice, 1, MAX_WORKERS, 1)
    const onDeviceFailure = options.onDeviceFailure ?? 'fail'
    if (onDeviceFailure !== 'fail' && onDeviceFailure !== 'cpu' && onDeviceFailure !== 'unavailable') {
      throw new PoolError(
        'INVALID_INPUT',
        `onDeviceFailure must be "fail", "cpu" or "unavailable", got ${shown(onDeviceFailure)}`,
      )
    }
    const { devices, cpuFallback } = workerDevices(options.devices, cpuWorkers, sessionsPerDevice, onDeviceFailure)
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
    const cpuBudget = bytes('cpuMemoryBytes', options.cpuMemoryBytes)
    const gpuBudget = bytes('gpuMemoryBytes', options.gpuMemoryBytes)
    const memoryThreshold = options.memoryThreshold ?? 0.8
    if (typeof memoryThreshold !== 'number' || !(memoryThreshold > 0 && memoryThreshold <= 1)) {
      throw new PoolError('INVALID_INPUT', `memoryThreshold must be a number in (0, 1], got ${shown(memoryThreshold)}`)
    }
    const idleTimeoutMs = integer('modelIdleTimeoutMs', options.modelIdleTimeoutMs, 1, MAX_INT, undefined)
    const maxSwitchesPerHour = integer('maxSwitchesPerHour', options.maxSwitchesPerHour, 0, MAX_INT, undefined)
    const switchDelayMs = integer('modelSwitchDelayMs', options.modelSwitchDelayMs, 0, MAX_INT, 100)
    const ortLibraryPath = pathOption('ortLibraryPath', options.ortLibraryPath)
    const cacheDir = pathOption('cacheDir', options.cacheDir)
    const { specs, defaultIndex } = modelSpecs(options)
    const memoryBudgets = workerBudgets(devices, memoryThreshold, cpuBudget, gpuBudget)

    const runtime = initRuntime(ortLibraryPath)
    const bindingSpecs: BindingModelSpec[] = []
    const preload: number[] = []
    for (const [index, [name, spec]] of specs.entries()) {
      const path =
        spec.path === 'default' ? await ensureDefaultModel(cacheDir ?? defaultCacheDir()) : resolve(spec.path)
      bindingSpecs.push({
        name,
        path,
        pooling: spec.pooling,
        normalize: spec.normalize,
        maxLength: spec.maxLength,
        priority: spec.priority ?? 0,
        workers: spec.devices && affinity(name, spec.devices, devices),
        memoryBytes: spec.memoryBytes,
      })
      if (spec.preload ?? index === defaultIndex) preload.push(index)
    }
    if (!preload.includes(defaultIndex)) preload.unshift(defaultIndex)
    const emitter: { pool?: Pool; early: BindingEvent[] } = { early: [] }
    try {
      const binding = await native().createPool(
        {
          models: bindingSpecs,
          preload,
          devices,
          memoryBudgets,
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
        (event: BindingEvent) => {
          if (emitter.pool) emitter.pool.#emitNative(event)
          else emitter.early.push(event)
        },
      )
      const models = bindingSpecs.map((spec, index) => ({
        name: spec.name,
        index,
        path: spec.path,
        maxLength: binding.maxLength(index),
      }))
      const pool = new Pool(binding, runtime, { models, defaultModel: defaultIndex, devices })
      emitter.pool = pool
      // Events of the start (the preloads) reach listeners attached right after `create`.
      setImmediate(() => {
        for (const event of emitter.early.splice(0)) pool.#emitNative(event)
      })
      return pool
    } catch (error) {
      throw fromNative(error)
    }
  }

  /** Re-emits a native event with names instead of indices. */
  #emitNative(event: BindingEvent): void {
    const names = this.#settings.models
    const payload: PoolEvent = {
      type: event.kind as PoolEventType,
      worker: event.worker,
      device: this.#settings.devices[event.worker] ?? 'unknown',
      ...(event.model == null ? {} : { model: names[event.model]?.name }),
      ...(event.reason == null ? {} : { reason: event.reason as 'idle' | 'requested' }),
      ...(event.forModel == null ? {} : { forModel: names[event.forModel]?.name }),
      ...(event.error == null ? {} : { error: fromNative(new Error(event.error)) }),
      ...(event.tookMs == null ? {} : { tookMs: event.tookMs }),
    }
    this.emit(payload.type, payload)
  }

  /** Names of the models, in the order they were given. */
  get models(): string[] {
    return this.#settings.models.map((m) => m.name)
  }

  /**
   * Loads model `name` on `workers` (ids; default: every worker it may use) and resolves once
   * each holds it. A worker loads between batches and may evict other models to make room.
   *
   * @throws {PoolError} `INVALID_INPUT` (unknown model, worker it may not use),
   * `MODEL_UNAVAILABLE` (no room: budget, priorities or the switch cap), `MODEL_INVALID`,
   * `DEVICE_UNAVAILABLE`, `POOL_CLOSED`.
   */
  async preload(name: string, options: { workers?: number[] } = {}): Promise<void> {
    const model = this.#model(name)
    checkKeys(options, PRELOAD_KEYS)
    const workers: unknown = options.workers
    if (workers !== undefined) {
      if (!Array.isArray(workers) || workers.length > MAX_WORKERS) {
        throw new PoolError(
          'INVALID_INPUT',
          `workers must be an array of at most ${MAX_WORKERS} worker ids, got ${Array.isArray(workers) ? `${workers.length} ids` : shown(workers)}`,
        )
      }
      const last = this.#settings.devices.length - 1
      workers.forEach((worker, i) => integer(`workers[${i}]`, worker, 0, last, 0))
    }
    if (this.#closed) throw new PoolError('POOL_CLOSED', 'the pool is closed')
    try {
      await this.#native.preload(model.index, workers as number[] | undefined)
    } catch (error) {
      throw fromNative(error)
    }
  }

  /**
   * Unloads model `name` from every worker (each between batches) and resolves with how many
   * held it. Calls queued for it are kept: a worker loads it again for them.
   *
   * @throws {PoolError} `INVALID_INPUT` for an unknown model, `POOL_CLOSED`.
   */
  async unload(name: string): Promise<number> {
    const model = this.#model(name)
    if (this.#closed) throw new PoolError('POOL_CLOSED', 'the pool is closed')
    try {
      return await this.#native.unload(model.index)
    } catch (error) {
      throw fromNative(error)
    }
  }

  #model(name: string | undefined): ModelEntry {
    const models = this.#settings.models
    if (name === undefined) return models[this.#settings.defaultModel]
    const found = typeof name === 'string' ? models.find((m) => m.name === name) : undefined
    if (!found) {
      throw new PoolError(
        'INVALID_INPUT',
        `unknown model ${JSON.stringify(name)}; this pool has ${models.map((m) => JSON.stringify(m.name)).join(', ')}`,
      )
    }
    return found
  }

  /**
   * A snapshot of the pool and of every worker, read without locks. Still answers after
   * {@link Pool.close} (every worker then reads `stopped`).
   */
  status(): PoolStatus {
    return this.#status(
      this.#read(() => this.#native.status()),
      this.#read(() => this.#native.metrics()),
    )
  }

  /** A synchronous native read, its failure as a {@link PoolError}. */
  #read<T>(read: () => T): T {
    try {
      return read()
    } catch (error) {
      throw fromNative(error)
    }
  }

  /** {@link Pool.status} from one native read of the counters and one of the histograms. */
  #status(native: BindingStatus, histograms: BindingModelHistograms[]): PoolStatus {
    const lifetimeMs = Math.max(performance.now() - this.#started, 1)
    const names = this.#settings.models.map((m) => m.name)
    const workers = native.workers.map((w) => ({
      id: w.id,
      device: w.device,
      provider: w.provider as 'cpu' | 'cuda',
      ...(w.fallback ? { fallback: w.fallback } : {}),
      ...(w.failure ? { failure: w.failure } : {}),
      state: w.state as WorkerState,
      loadedModels: w.loadedModels.map((m) => names[m]),
      loads: w.loads,
      switches: w.switches,
      evictions: w.evictions,
      memoryUsedBytes: w.memoryUsed,
      memoryBudgetBytes: w.memoryBudget,
      items: w.items,
      batches: w.batches,
      errors: w.errors,
      steals: w.steals,
      meanBatchSize: w.batches > 0 ? w.items / w.batches : 0,
      tokenBudget: w.tokenBudget,
      busyMs: w.busyMs,
      utilisation: Math.min(100, (100 * w.busyMs) / lifetimeMs),
      itemsPerSecond: w.itemsPerSecond,
    }))
    const models: Record<string, ModelStatus> = {}
    native.models.forEach((m, index) => {
      const latency = (q: number) => {
        const seconds = quantile(histograms[index].endToEnd, q)
        return seconds === null ? null : seconds * 1000
      }
      models[m.name] = {
        path: this.#settings.models[index].path,
        dimension: m.dimension ?? null,
        maxLength: m.maxLength,
        priority: m.priority,
        memoryBytes: m.memoryBytes,
        loadedOn: m.loadedOn,
        queued: Math.max(0, m.outstanding - m.inFlight),
        inFlight: m.inFlight,
        items: m.items,
        loads: m.loads,
        unloads: m.unloads,
        evictions: m.evictions,
        latencyMs: { p50: latency(0.5), p99: latency(0.99) },
      }
    })
    const items = workers.reduce((sum, w) => sum + w.items, 0)
    return {
      outstanding: native.outstanding,
      queued: Math.max(0, native.outstanding - native.inFlight),
      inFlight: native.inFlight,
      waiting: native.waiting,
      items,
      itemsPerSecond: (items * 1000) / lifetimeMs,
      workers,
      models,
      model: { path: this.modelPath, dimension: this.dimension, maxLength: this.maxLength },
      runtime: this.runtime,
    }
  }

  /**
   * The pool's counters, gauges and histograms in the Prometheus text format, labelled by model,
   * device and worker: serve it from `/metrics`, alone or appended to prom-client's
   * `await register.metrics()`. Histograms: `inferpool_queue_wait_seconds` (per text, queued to
   * batch start), `inferpool_tokenize_seconds` and `inferpool_request_duration_seconds` (per
   * call), `inferpool_inference_seconds` and `inferpool_batch_size` (per batch, model and
   * worker).
   */
  metrics(): string {
    const native = this.#read(() => this.#native.status())
    const histograms = this.#read(() => this.#native.metrics())
    const status = this.#status(native, histograms)
    const models = this.#settings.models
    const worker = (w: WorkerStatus): Labels => ({ device: w.device, worker: String(w.id) })
    const perWorker = (pick: (w: WorkerStatus) => number) =>
      status.workers.map((w) => ({ labels: worker(w), value: pick(w) }))
    const perModelWorker = (pick: (w: (typeof native.workers)[number], model: number) => number) =>
      models.flatMap((m) =>
        status.workers.map((w) => ({
          labels: { model: m.name, ...worker(w) },
          value: pick(native.workers[w.id], m.index),
        })),
      )
    const perModel = (pick: (m: ModelStatus) => number) =>
      models.map((m) => ({ labels: { model: m.name }, value: pick(status.models[m.name]) }))
    const modelHistogram = (pick: (h: (typeof histograms)[number]) => HistogramData) =>
      models.map((m) => ({ labels: { model: m.name }, value: pick(histograms[m.index]) }))
    const workerHistogram = (pick: (h: (typeof histograms)[number]) => HistogramData[]) =>
      models.flatMap((m) =>
        status.workers.map((w) => ({
          labels: { model: m.name, ...worker(w) },
          value: pick(histograms[m.index])[w.id],
        })),
      )
    const families: Family[] = [
      {
        name: 'inferpool_items_total',
        help: 'Texts embedded.',
        type: 'counter',
        samples: perModelWorker((w, m) => w.modelItems[m]),
      },
      {
        name: 'inferpool_batches_total',
        help: 'Batches run, successful or not.',
        type: 'counter',
        samples: perModelWorker((w, m) => w.modelBatches[m]),
      },
      {
        name: 'inferpool_errors_total',
        help: 'Batches that failed (their texts were retried or reported).',
        type: 'counter',
        samples: perWorker((w) => w.errors),
      },
      {
        name: 'inferpool_steals_total',
        help: 'Batches of queued texts stolen from other workers.',
        type: 'counter',
        samples: perWorker((w) => w.steals),
      },
      {
        name: 'inferpool_switches_total',
        help: 'Model loads that evicted another model.',
        type: 'counter',
        samples: perWorker((w) => w.switches),
      },
      { name: 'inferpool_model_loads_total', help: 'Model loads.', type: 'counter', samples: perModel((m) => m.loads) },
      {
        name: 'inferpool_model_evictions_total',
        help: 'Models unloaded to make room for another.',
        type: 'counter',
        samples: perModel((m) => m.evictions),
      },
      {
        name: 'inferpool_model_unloads_total',
        help: 'Models unloaded: idle, requested or evicted.',
        type: 'counter',
        samples: perModel((m) => m.unloads),
      },
      {
        name: 'inferpool_busy_seconds_total',
        help: 'Time spent running batches.',
        type: 'counter',
        samples: perWorker((w) => w.busyMs / 1000),
      },
      {
        name: 'inferpool_model_loaded',
        help: 'Whether the worker holds the model (1) or not (0).',
        type: 'gauge',
        samples: perModelWorker((w, m) => (w.loadedModels.includes(m) ? 1 : 0)),
      },
      {
        name: 'inferpool_memory_used_bytes',
        help: 'Estimated memory of the models a worker holds.',
        type: 'gauge',
        samples: perWorker((w) => w.memoryUsedBytes),
      },
      {
        name: 'inferpool_token_budget',
        help: 'Current adaptive budget, padded tokens per batch.',
        type: 'gauge',
        samples: perWorker((w) => w.tokenBudget),
      },
      {
        name: 'inferpool_queued_items',
        help: 'Texts waiting for a worker.',
        type: 'gauge',
        samples: perModel((m) => m.queued),
      },
      {
        name: 'inferpool_in_flight_items',
        help: 'Texts running now.',
        type: 'gauge',
        samples: perModel((m) => m.inFlight),
      },
      {
        name: 'inferpool_queue_wait_seconds',
        help: 'Per text: from queued to the start of its batch.',
        type: 'histogram',
        samples: modelHistogram((h) => h.queueWait),
      },
      {
        name: 'inferpool_tokenize_seconds',
        help: 'Per call: tokenizing its texts.',
        type: 'histogram',
        samples: modelHistogram((h) => h.tokenize),
      },
      {
        name: 'inferpool_request_duration_seconds',
        help: 'Per call: from submitted to answered, in the native pool.',
        type: 'histogram',
        samples: modelHistogram((h) => h.endToEnd),
      },
      {
        name: 'inferpool_inference_seconds',
        help: 'Per batch: running it on the device.',
        type: 'histogram',
        samples: workerHistogram((h) => h.inference),
      },
      {
        name: 'inferpool_batch_size',
        help: 'Per batch: texts in it.',
        type: 'histogram',
        samples: workerHistogram((h) => h.batchSize),
      },
    ]
    return exposition(families)
  }

  /** Whether {@link Pool.close} has been called. */
  get closed(): boolean {
    return this.#closed
  }

  /**
   * Embeds `texts`. Calls from anywhere are batched together; tokenization and inference run on
   * Rust threads. Resolves with one `Float32Array` per text, in input order (views into one
   * buffer).
   *
   * @throws {PoolError} `INVALID_INPUT` when `texts` is not an array of strings or an option is
   * malformed, `POOL_CLOSED` after {@link Pool.close}, `OVERLOADED` when `maxQueuedItems` would
   * be exceeded (with `whenFull: 'reject'`, or when the call alone is larger), `ABORTED` when `signal` aborts, `TIMEOUT` when `timeoutMs` passes,
   * `INFERENCE_FAILED` when ONNX Runtime fails on every attempt.
   */
  async embed(texts: readonly string[], options: EmbedOptions = {}): Promise<Float32Array[]> {
    if (options !== null && typeof options === 'object') checkEmbedOptions(options)
    const onProgress = options?.onProgress
    if (onProgress !== undefined && typeof onProgress !== 'function') {
      throw new PoolError('INVALID_INPUT', 'onProgress must be a function')
    }
    return this.#embed(texts, options)
  }

  /**
   * Embeds texts as they come from `source` (an array, a generator, a `readline` interface, a
   * `stream.Readable` of strings, any iterable or async iterable) and yields
   * `{ index, embedding }` in source order. It never reads more than `highWaterMark` texts
   * ahead of the consumer, so memory stays flat over any number of texts. Leaving the loop early
   * (`break`, `return`, a throw) cancels the texts still queued and closes the source.
   *
   * @throws {PoolError} `INVALID_INPUT` when the source yields something other than a string,
   * and every code {@link Pool.embed} throws.
   */
  async *embedStream(
    source: Iterable<string> | AsyncIterable<string>,
    options: StreamOptions = {},
  ): AsyncGenerator<StreamItem, void, undefined> {
    checkKeys(options, STREAM_KEYS)
    const highWaterMark = positiveInt('highWaterMark', options.highWaterMark, 256)
    const chunkSize = Math.min(positiveInt('chunkSize', options.chunkSize, 32), highWaterMark)
    const { model, priority, signal: outer } = options
    this.#model(model)
    if (priority !== undefined && priority !== 'interactive' && priority !== 'bulk') {
      throw new PoolError('INVALID_INPUT', `priority must be "interactive" or "bulk", got ${shown(priority)}`)
    }
    if (outer !== undefined && !(outer instanceof AbortSignal)) {
      throw new PoolError('INVALID_INPUT', 'signal must be an AbortSignal')
    }
    const iterator = openIterator(source)
    // Each part in flight has its own signal, released when it settles, so a signal never
    // holds more than the listeners of one call however long the stream. The caller's signal
    // gets one listener, which cancels every part in flight.
    const cancels = new Set<AbortController>()
    const cancelAll = (reason: unknown) => {
      for (const cancel of cancels) cancel.abort(reason)
    }
    const forward = () => cancelAll(outer?.reason)
    outer?.addEventListener('abort', forward, { once: true })
    // Parts in flight, in source order; each settles to its vectors (or its error, thrown when
    // the consumer reaches it).
    const parts: { start: number; vectors: Promise<Float32Array[]>; settled: boolean }[] = []
    let read = 0
    let taken = 0
    let exhausted = false
    try {
      while (true) {
        if (outer?.aborted) throw aborted(outer)
        // Read one more part when the window has room.
        if (!exhausted && read - taken < highWaterMark) {
          const texts: string[] = []
          while (texts.length < chunkSize && read + texts.length - taken < highWaterMark) {
            const next = await iterator.next()
            if (next.done) {
              exhausted = true
              break
            }
            if (typeof next.value !== 'string') {
              throw new PoolError(
                'INVALID_INPUT',
                `the source yielded ${describe(next.value)} at index ${read + texts.length}; expected a string`,
              )
            }
            texts.push(next.value)
          }
          if (texts.length > 0) {
            const cancel = new AbortController()
            cancels.add(cancel)
            const part = {
              start: read,
              vectors: this.#embed(texts, { model, priority, signal: cancel.signal }),
              settled: false,
            }
            const release = () => {
              part.settled = true
              cancels.delete(cancel)
            }
            part.vectors.then(release, release)
            parts.push(part)
            read += texts.length
          }
          // Keep reading while nothing is ready to hand over.
          if (!exhausted && read - taken < highWaterMark && !parts[0]?.settled) continue
        }
        const head = parts.shift()
        if (!head) return
        const vectors = await head.vectors
        for (let i = 0; i < vectors.length; i++) {
          yield { index: head.start + i, embedding: vectors[i] }
          taken++
        }
      }
    } finally {
      outer?.removeEventListener('abort', forward)
      if (parts.length > 0) {
        cancelAll(new Error('the stream was closed'))
        for (const part of parts) part.vectors.catch(() => undefined)
      }
      await iterator.return?.()
    }
  }

  async #embed(texts: readonly string[], options: EmbedOptions = {}): Promise<Float32Array[]> {
    if (this.#closed) throw new PoolError('POOL_CLOSED', 'the pool is closed')
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
    const { priority = 'bulk', signal, timeoutMs } = options
    const model = this.#model(options.model).index
    if (priority !== 'interactive' && priority !== 'bulk') {
      throw new PoolError('INVALID_INPUT', `priority must be "interactive" or "bulk", got ${JSON.stringify(priority)}`)
    }
    if (timeoutMs !== undefined) positiveInt('timeoutMs', timeoutMs, 0)
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new PoolError('INVALID_INPUT', 'signal must be an AbortSignal')
    }
    if (signal?.aborted) throw aborted(signal)
    if (texts.length === 0) return []
    const call: Call = { model, texts, priority, signal, onProgress: options.onProgress }
    // With `whenFull: 'wait'`, a call beyond the limit waits natively, in call order, and its
    // signal and timeout still apply there.
    return this.#submit(call, timeoutMs)
  }

  /** Hands one call to the native pool and waits for its rows. */
  async #submit(
    { model, texts, priority, signal, onProgress }: Call,
    timeoutMs: number | undefined,
  ): Promise<Float32Array[]> {
    // Progress comes from the native call as its texts complete: the call stays one call,
    // admitted (or refused) as a whole.
    const started = performance.now()
    let reported = 0
    let progressError: unknown
    const report = (done: number) => {
      if (done <= reported || progressError !== undefined || onProgress === undefined) return
      reported = done
      const seconds = (performance.now() - started) / 1000
      try {
        onProgress({ done, total: texts.length, itemsPerSecond: seconds > 0 ? done / seconds : 0 })
      } catch (error) {
        progressError = error
      }
    }
    // The native call object is this call's own handle: a cancel reaches it (and only it) at
    // any time, while its texts are still being tokenized too.
    const native = this.#native.embed(
      model,
      texts as string[],
      // The binding's string enum has exactly these values.
      priority as BindingPriority,
      timeoutMs,
      onProgress === undefined ? undefined : PROGRESS_PART,
      onProgress === undefined ? undefined : report,
    )
    const call = native.result()
    this.#pending.add(call)
    const onAbort = () => native.cancel(false)
    signal?.addEventListener('abort', onAbort, { once: true })
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => native.cancel(true), timeoutMs)
    let flat: Float32Array
    try {
      flat = await call
    } catch (error) {
      const failure = fromNative(error)
      if (failure.code === 'ABORTED' && signal?.aborted) throw aborted(signal, failure)
      if (failure.code === 'TIMEOUT' && timeoutMs !== undefined) throw timedOut(timeoutMs, failure)
      throw failure
    } finally {
      this.#pending.delete(call)
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
    }
    report(texts.length)
    if (progressError !== undefined) throw progressError
    const d = flat.length / texts.length
    return Array.from({ length: texts.length }, (_, i) => flat.subarray(i * d, (i + 1) * d))
  }

  /**
   * Stops the pool. With `drain: true` (the default) every call already made completes first;
   * with `drain: false` queued work fails with `POOL_CLOSED`. Resolves once every worker thread
   * has exited. Calling it again returns the same promise, except that `drain: false` after a
   * draining close escalates it: what is still queued fails with `POOL_CLOSED` at once, and both
   * promises resolve once the workers have exited.
   *
   * @throws {PoolError} `INVALID_INPUT` for malformed options (the pool is left as it was).
   */
  close(options: { drain?: boolean } = {}): Promise<void> {
    try {
      checkKeys(options, CLOSE_KEYS)
    } catch (error) {
      return Promise.reject(error)
    }
    const drain = options.drain ?? true
    if (typeof drain !== 'boolean') {
      return Promise.reject(new PoolError('INVALID_INPUT', `drain must be a boolean, got ${shown(drain)}`))
    }
    if (this.#closing === undefined) {
      this.#closed = true
      // A call made before close() may still be on its way into the native queue: a drain
      // waits for every such call to settle first, so none of them is turned away. A cancel
      // that comes meanwhile does not wait: it closes natively at once, and the calls settle.
      this.#closing = drain
        ? this.#settled()
            .then(() => this.#stop(true))
            .then(() => this.#cancelling)
        : this.#cancel()
    } else if (!drain && this.#cancelling === undefined) {
      const draining = this.#closing
      this.#closing = Promise.all([this.#cancel(), draining]).then(() => undefined)
    }
    return this.#closing
  }

  /** Closes natively, failing what is queued, and wakes the calls waiting for room to fail too. */
  #cancel(): Promise<void> {
    try {
      // Synchronously: calls made before this one whose texts have not reached the pool yet
      // are turned away too, instead of racing the close.
      this.#native.beginClose(false)
    } catch (error) {
      return Promise.reject(fromNative(error))
    }
    this.#cancelling = this.#stop(false)
    return this.#cancelling
  }

  /** The native close: resolves once every worker thread has exited. */
  async #stop(drain: boolean): Promise<void> {
    try {
      await this.#native.close(drain)
    } catch (error) {
      throw fromNative(error)
    }
  }

  /** Resolves once no call is in flight (waiting for room included). */
  async #settled(): Promise<void> {
    while (this.#pending.size > 0) {
      await Promise.allSettled(this.#pending)
    }
  }

  /** `await using pool = await Pool.create()` closes (draining) at the end of the scope. */
  [asyncDispose](): Promise<void> {
    return this.close()
  }
}

function openIterator(source: Iterable<string> | AsyncIterable<string>): AsyncIterator<string> | Iterator<string> {
  if (source !== null && typeof source === 'object') {
    const asyncIterable = (source as AsyncIterable<string>)[Symbol.asyncIterator]
    if (typeof asyncIterable === 'function') return asyncIterable.call(source)
  }
  const iterable = (source as Iterable<string> | null)?.[Symbol.iterator]
  if (typeof iterable === 'function') return iterable.call(source)
  throw new PoolError('INVALID_INPUT', `the source must be iterable or async iterable, got ${describe(source)}`)
}

function timedOut(timeoutMs: number, cause?: unknown): PoolError {
  return new PoolError(
    'TIMEOUT',
    `the call did not finish within ${timeoutMs} ms`,
    cause === undefined ? {} : { cause },
  )
}

function aborted(signal: AbortSignal, cause?: unknown): PoolError {
  const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'aborted')
  return new PoolError('ABORTED', `the call was aborted: ${reason}`, { cause: cause ?? signal.reason })
}

function describe(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  return typeof value
}

/** `value` in an error message: numbers, booleans and strings as they are, others by their type. */
function shown(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value)
  return describe(value)
}
