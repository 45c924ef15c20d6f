import { EventEmitter } from 'node:events'
import { availableParallelism, totalmem } from 'node:os'
import { resolve } from 'node:path'

import type { BindingEvent, BindingModelKind, BindingModelSpec, BindingPool, BindingPooling } from './binding.cjs'
import { ResultCache } from './cache.js'
import { type Embedded, submit } from './call.js'
import { type GenerationChoice, checkGenerate, generate, generateStream } from './generate.js'
import { cudaDeviceCount, needsGpuMemory, queryGpuMemory, workerBudgets } from './devices.js'
import { PoolError, fromNative } from './errors.js'
import { defaultCacheDir, ensureDefaultModel } from './model.js'
import { native } from './native.js'
import {
  type Call,
  checkCall,
  checkCloseOptions,
  checkEmbedOptions,
  checkPreload,
  modelIndex,
  resolveOptions,
} from './options.js'
import { type RuntimeInfo, initRuntime } from './runtime.js'
import { type Snapshot, type StatusContext, toMetrics, toStatus } from './status.js'
import { embedStream } from './stream.js'
import type {
  EmbedOptions,
  GenerateDelta,
  GenerateOptions,
  Generated,
  ModelKind,
  EmbedResult,
  PoolEvent,
  PoolEventType,
  PoolOptions,
  PoolStatus,
  StreamItem,
  StreamOptions,
  Pooling,
} from './types.js'

/** What a pool keeps of a model. */
interface ModelEntry {
  name: string
  path: string
  kind: ModelKind
  maxLength: number
  pooling: Pooling
  normalize: boolean
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
  /** Model names, kinds and the default model, for the checks of each call. */
  readonly #choice: GenerationChoice
  /** The device of every worker. */
  readonly #devices: string[]
  /** What status and metrics need besides a native snapshot. */
  readonly #context: StatusContext
  /** The result cache, when the pool has one. */
  readonly #cache: ResultCache | undefined

  /** Width of the default model's embeddings (384 for the built-in model). */
  readonly dimension: number
  /** Longest token sequence fed to the default model; longer texts are truncated. */
  readonly maxLength: number
  /** Path of the default model's ONNX file or folder. */
  readonly modelPath: string
  /** The ONNX Runtime library in use. */
  readonly runtime: RuntimeInfo

  private constructor(
    binding: BindingPool,
    runtime: RuntimeInfo,
    models: ModelEntry[],
    defaultModel: number,
    devices: string[],
    cacheEntries: number | undefined,
  ) {
    super()
    this.#cache = cacheEntries === undefined ? undefined : new ResultCache(cacheEntries)
    this.#native = binding
    this.#choice = { names: models.map((m) => m.name), defaultModel, kinds: models.map((m) => m.kind) }
    this.#devices = devices
    const model = models[defaultModel]
    this.dimension = binding.dimension(defaultModel) ?? 0
    this.maxLength = model.maxLength
    this.modelPath = model.path
    this.runtime = runtime
    this.#context = {
      models,
      started: performance.now(),
      model: { path: this.modelPath, dimension: this.dimension, maxLength: this.maxLength },
      runtime,
    }
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
    const env = process.env
    const resolved = resolveOptions(options, {
      env,
      cores: availableParallelism(),
      gpuCount: () => cudaDeviceCount(env),
    })
    const { devices, memory } = resolved
    // Asked only when a GPU budget depends on it; it runs while the models are found.
    const gpuMemory = needsGpuMemory(devices, memory) ? queryGpuMemory() : Promise.resolve([])

    const runtime = initRuntime(resolved.ortLibraryPath)
    const specs: BindingModelSpec[] = []
    for (const model of resolved.models) {
      const path =
        model.path === 'default'
          ? await ensureDefaultModel(resolved.cacheDir ?? defaultCacheDir())
          : resolve(model.path)
      // `Pooling` and `ModelKind` are the values of these string enums of the binding.
      specs.push({
        ...model,
        path,
        pooling: model.pooling as BindingPooling,
        kind: model.kind as BindingModelKind | undefined,
      })
    }
    const memoryBudgets = workerBudgets(devices, memory, totalmem(), await gpuMemory)
    const emitter: { pool?: Pool; early: BindingEvent[] } = { early: [] }
    try {
      const binding = await native().createPool(
        {
          models: specs,
          preload: resolved.preload,
          devices,
          memoryBudgets,
          ...resolved.scheduler,
        },
        (event: BindingEvent) => {
          if (emitter.pool) emitter.pool.#emitNative(event)
          else emitter.early.push(event)
        },
      )
      const kinds = binding.status().models.map((m) => m.kind)
      const models = specs.map((spec, index) => ({
        name: spec.name,
        path: spec.path,
        kind: kinds[index],
        maxLength: binding.maxLength(index),
        pooling: spec.pooling,
        normalize: spec.normalize,
      }))
      const pool = new Pool(binding, runtime, models, resolved.defaultModel, devices, resolved.cacheEntries)
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
    const names = this.#choice.names
    const payload: PoolEvent = {
      type: event.kind,
      worker: event.worker,
      device: this.#devices[event.worker] ?? 'unknown',
      ...(event.model == null ? {} : { model: names[event.model] }),
      ...(event.reason == null ? {} : { reason: event.reason }),
      ...(event.forModel == null ? {} : { forModel: names[event.forModel] }),
      ...(event.error == null ? {} : { error: fromNative(event.error) }),
      ...(event.tookMs == null ? {} : { tookMs: event.tookMs }),
    }
    this.emit(payload.type, payload)
  }

  /** Names of the models, in the order they were given. */
  get models(): string[] {
    return [...this.#choice.names]
  }

  /** Name of the model `embed` uses without `{ model }`. */
  get defaultModel(): string {
    return this.#choice.names[this.#choice.defaultModel]
  }

  /** Whether {@link Pool.close} has been called. */
  get closed(): boolean {
    return this.#closed
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
    const { model, workers } = checkPreload(name, options, this.#choice, this.#devices.length)
    if (this.#closed) throw new PoolError('POOL_CLOSED', 'the pool is closed')
    try {
      await this.#native.preload(model, workers)
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
    const model = modelIndex(name, this.#choice)
    if (this.#closed) throw new PoolError('POOL_CLOSED', 'the pool is closed')
    try {
      return await this.#native.unload(model)
    } catch (error) {
      throw fromNative(error)
    }
  }

  /**
   * A snapshot of the pool and of every worker, read without locks. Still answers after
   * {@link Pool.close} (every worker then reads `stopped`).
   */
  status(): PoolStatus {
    return toStatus(this.#snapshot(), this.#context)
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
    return toMetrics(this.#snapshot(), this.#context)
  }

  /** One native read of the counters and one of the histograms, failures as {@link PoolError}. */
  #snapshot(): Snapshot {
    try {
      return { status: this.#native.status(), histograms: this.#native.metrics(), cache: this.#cache?.counts() }
    } catch (error) {
      throw fromNative(error)
    }
  }

  /**
   * Embeds `texts`. Calls from anywhere are batched together; tokenization and inference run on
   * Rust threads. Resolves with one `Float32Array` per text, in input order (views into one
   * buffer).
   *
   * @throws {PoolError} `INVALID_INPUT` when `texts` is not an array of strings or an option is
   * malformed, `POOL_CLOSED` after {@link Pool.close}, `OVERLOADED` when `maxQueuedItems` would
   * be exceeded (with `whenFull: 'reject'`, or when the call alone is larger), `ABORTED` when
   * `signal` aborts, `TIMEOUT` when `timeoutMs` passes, `INFERENCE_FAILED` when ONNX Runtime
   * fails on every attempt.
   */
  async embed(texts: readonly string[], options: EmbedOptions = {}): Promise<Float32Array[]> {
    checkEmbedOptions(options)
    return (await this.#embed(texts, options)).embeddings
  }

  /**
   * {@link Pool.embed}, and how many tokens each text was: what the model was fed for it
   * (special tokens included, after truncation), counted by the tokenization the call runs
   * anyway, for usage reports and billing.
   *
   * @throws {PoolError} every code {@link Pool.embed} throws.
   */
  async embedWithUsage(texts: readonly string[], options: EmbedOptions = {}): Promise<EmbedResult> {
    checkEmbedOptions(options)
    const { embeddings, tokenCounts } = await this.#embed(texts, options, true)
    if (tokenCounts === undefined) throw new PoolError('INTERNAL', 'the call came back without its token counts')
    return { embeddings, tokenCounts, totalTokens: tokenCounts.reduce((sum, n) => sum + n, 0) }
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
  embedStream(
    source: Iterable<string> | AsyncIterable<string>,
    options: StreamOptions = {},
  ): AsyncGenerator<StreamItem, void, undefined> {
    return embedStream(source, options, {
      models: this.#choice,
      embed: async (texts, callOptions) => (await this.#embed(texts, callOptions)).embeddings,
    })
  }

  /**
   * Generates text for each prompt with a seq2seq model. Prompts from every call are encoded in
   * length-sorted batches and decoded in cohorts (rows at the same step) on Rust threads; a new
   * call joins at the next decoder step. Resolves with one result per prompt, in input order.
   *
   * @throws {PoolError} `INVALID_INPUT` (bad prompts or options, or no seq2seq model to use),
   * `POOL_CLOSED`, `OVERLOADED`, `ABORTED`, `TIMEOUT`, `INFERENCE_FAILED`.
   */
  async generate(prompts: readonly string[], options: GenerateOptions = {}): Promise<Generated[]> {
    if (this.#closed) throw new PoolError('POOL_CLOSED', 'the pool is closed')
    return generate(this.#native, checkGenerate(prompts, options, this.#choice), this.#pending)
  }

  /**
   * Generates text for one prompt and yields it as it grows: `{ text, token }` pieces (whole
   * characters only), then a last piece with the `finishReason`. Breaking out of the loop (or
   * aborting) cancels the prompt: its row leaves the decoder at the next step.
   *
   * @throws {PoolError} every code {@link Pool.generate} throws.
   */
  generateStream(
    prompt: string,
    options: Omit<GenerateOptions, 'onProgress'> = {},
  ): AsyncGenerator<GenerateDelta, void, undefined> {
    if (this.#closed) throw new PoolError('POOL_CLOSED', 'the pool is closed')
    if (typeof prompt !== 'string') throw new PoolError('INVALID_INPUT', 'prompt must be a string')
    if (options !== null && typeof options === 'object' && 'onProgress' in options) {
      throw new PoolError('INVALID_INPUT', 'a stream reports its progress itself: onProgress is not taken')
    }
    return generateStream(this.#native, checkGenerate([prompt], options, this.#choice), this.#pending)
  }

  /**
   * One call of {@link Pool.embed} or of a stream: checked, then answered from the cache where
   * it can be and handed to the native pool for the rest.
   */
  async #embed(texts: readonly string[], options: EmbedOptions, countTokens = false): Promise<Embedded> {
    if (this.#closed) throw new PoolError('POOL_CLOSED', 'the pool is closed')
    const call = checkCall(texts, options, this.#choice)
    if (this.#cache === undefined) return submit(this.#native, call, this.#pending, countTokens)
    // Cached entries keep their token counts, so the cache counts every text it runs.
    return this.#cache.embed(call, (part: Call) => submit(this.#native, part, this.#pending, true))
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
    let drain: boolean
    try {
      drain = checkCloseOptions(options)
    } catch (error) {
      return Promise.reject(error)
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
