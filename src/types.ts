// The public types of inferpool: options, results, status and events. The `Pool` class is in
// pool.ts; everything here is re-exported from index.ts. A union that is exactly the values of a
// binding's string enum is that enum's values (defined once, in the Rust binding).

import type {
  BindingEventKind,
  BindingFinishReason,
  BindingModelKind,
  BindingPooling,
  BindingPriority,
  BindingProvider,
  BindingUnloadReason,
  BindingWorkerState,
} from './binding.cjs'
import type { PoolError } from './errors.js'
import type { RuntimeInfo } from './runtime.js'

/** How token states become one vector per text. */
export type Pooling = `${BindingPooling}`

/** What a model computes. */
export type ModelKind = `${BindingModelKind}`

/** Options of {@link Pool.generate} and {@link Pool.generateStream}. */
export interface GenerateOptions {
  /**
   * Name of the seq2seq model to use. Default: the default model when it is a seq2seq model,
   * else the pool's only seq2seq model.
   */
  model?: string
  /** Most tokens generated per prompt. Default: the model's `generation_config.json`, else 64. */
  maxNewTokens?: number
  /** The end-of-sequence token cannot end a text before this many tokens. Default 0. */
  minNewTokens?: number
  /** 0 (default) decodes greedily; above 0 samples from the logits divided by it. */
  temperature?: number
  /** When sampling, only among the `topK` most likely tokens (0, the default: all). */
  topK?: number
  /** When sampling, only among the most likely tokens whose probabilities reach `topP` (default 1: all). */
  topP?: number
  /** Seed of the sampling: the same seed, prompts and options give the same texts. */
  seed?: number
  /** A text ends before the first of these it would contain (`finishReason: 'stop'`); at most 16. */
  stop?: string | readonly string[]
  /** Divides the logits of tokens already generated (Hugging Face's `repetition_penalty`). Default 1: off. */
  repetitionPenalty?: number
  /** `'interactive'` calls are served before `'bulk'` ones (the default). */
  priority?: Priority
  /** Aborting rejects the call with `ABORTED`; its prompts leave the decoder at the next step. */
  signal?: AbortSignal
  /** Rejects the call with `TIMEOUT` when it has not finished within this many milliseconds. */
  timeoutMs?: number
  /** Called each time another prompt of the call has finished (by `generate`, not by a stream). */
  onProgress?: (progress: Progress) => void
}

/** Why a generated text ended. */
export type FinishReason = `${BindingFinishReason}`

/** One prompt's result of {@link Pool.generate}. */
export interface Generated {
  /** The generated text (special tokens skipped; a stop sequence and what follows excluded). */
  text: string
  /** The generated token ids (the end-of-sequence token excluded). */
  tokens: number[]
  /** `'eos'`: the model ended it; `'length'`: `maxNewTokens` were generated; `'stop'`: a stop sequence. */
  finishReason: FinishReason
  /** Tokens of the prompt as the encoder was fed them (special tokens included, after truncation). */
  promptTokens: number
}

/**
 * One piece of {@link Pool.generateStream}: the text a new token added (whole characters only),
 * or, last, why the text ended. The pieces' texts joined are the text {@link Pool.generate}
 * gives for the same prompt and options.
 */
export interface GenerateDelta {
  /** New text; may be empty while a character spans several tokens. */
  text: string
  /** The token that made it; `null` on the last piece. */
  token: number | null
  /** Set on the last piece only. */
  finishReason: FinishReason | null
  /** Tokens of the prompt as the encoder was fed them; set on the last piece only. */
  promptTokens: number | null
}

/** A seq2seq model's decoding, in {@link ModelStatus}. */
export interface GenerationStatus {
  /** How its decoder is exported: `'merged'`, `'pair'` or `'no-past'`. */
  layout: string
  /** Cohorts (rows decoding in step) now, over every worker. */
  cohorts: number
  /** Prompts decoding now. */
  rows: number
  /** Tokens generated since the pool started. */
  tokens: number
  /** Decoder steps run since the pool started. */
  steps: number
  /** Tokens per second lately. */
  tokensPerSecond: number
  /** Time from a prompt's admission to its first token, milliseconds (histogram estimates; `null` before any). */
  timeToFirstTokenMs: { p50: number | null; p99: number | null }
  /** Time between two tokens of a prompt, milliseconds. */
  timePerTokenMs: { p50: number | null; p99: number | null }
}

/** Queue class of a call: `interactive` is served before `bulk`; bulk is never starved. */
export type Priority = `${BindingPriority}`

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
export type WorkerState = `${BindingWorkerState}`

/** One worker in {@link PoolStatus}. */
export interface WorkerStatus {
  /** Worker index. */
  id: number
  /** `'cpu'` or `'cuda:N'`, as configured. */
  device: string
  /** The execution provider it runs on: `'cuda'`, or `'cpu'` (also after a fallback). */
  provider: `${BindingProvider}`
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
  /** Estimated memory of the models it holds and of the caches of the prompts it decodes, bytes. */
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
  /**
   * Batches that started while every other worker was idle and ran on the model's lone CPU
   * session, over the cores the others left free.
   */
  spreadBatches: number
  /** Mean texts per batch. */
  meanBatchSize: number
  /** Its current budget, padded tokens per batch: `maxBatchTokens`, lowered while its batches are slow or after an out-of-memory error. */
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
  /** The result cache's hits, misses and size; `null` without a cache. */
  cache: CacheStatus | null
}

/** The result cache in {@link PoolStatus}. */
export interface CacheStatus {
  /** Texts answered without running the model for them (cached, or run by another call). */
  hits: number
  /** Texts handed to the model. */
  misses: number
  /** Texts held now. */
  entries: number
  /** Most texts held. */
  maxEntries: number
}

/** One model in {@link PoolStatus}. */
export interface ModelStatus {
  /** Its ONNX file or folder. */
  path: string
  /** What it computes. */
  kind: ModelKind
  /** A seq2seq model's decoding; `null` for an embedding model. */
  generation: GenerationStatus | null
  /** How token states become one vector. */
  pooling: Pooling
  /** Whether its vectors are scaled to unit length. */
  normalize: boolean
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
  /**
   * What it computes: `'embedding'` (one vector per text) or `'seq2seq'` (text generation with
   * an encoder-decoder such as T5, from a Hugging Face Optimum export). Default: what the
   * folder holds (an `encoder_model.onnx` makes it `'seq2seq'`); given, a folder of the other
   * kind fails with `MODEL_INVALID`.
   */
  kind?: ModelKind
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
  reason?: `${BindingUnloadReason}`
  /** `model-evicted`: the model loaded in its place. */
  forModel?: string
  /** `model-load-failed` and `worker-failed`: what went wrong. */
  error?: PoolError
  /** `model-loaded`: how long the load took, milliseconds. */
  tookMs?: number
}

/** Event names of {@link Pool}. */
export type PoolEventType = `${BindingEventKind}`

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
   * Most padded tokens (longest text × texts) in one batch; a worker lowers its own budget while
   * its batches take over 2 s, and for good after one runs out of memory. Default 16384.
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
  /**
   * Keep results in memory: a text embedded before with the same model is answered from the
   * cache without running the model, and identical texts in calls running at the same time run
   * once. Off by default (`false`).
   */
  cache?: false | CacheOptions
}

/** Options of the result cache ({@link PoolOptions.cache}). */
export interface CacheOptions {
  /**
   * Most texts kept (least recently used out first), from 1 to 2^24. Each holds its vector
   * (4 bytes × dimension) and the text itself as its key. Default 10,000.
   */
  maxEntries?: number
}

/** What {@link Pool.embedWithUsage} resolves with. */
export interface EmbedResult {
  /** One vector per text, in input order (views into one buffer). */
  embeddings: Float32Array[]
  /**
   * Each text's token count: the tokens the model was fed for it (special tokens included,
   * after truncation to `maxLength`), counted by the tokenization the call runs anyway.
   */
  tokenCounts: Uint32Array
  /** The sum of `tokenCounts`. */
  totalTokens: number
}
