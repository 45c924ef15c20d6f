// Status and metrics: `Pool.status()` and `Pool.metrics()` mapped from one native snapshot (the
// counters and the histograms, each read once per call), with model indices turned into names.

import type { BindingModelHistograms, BindingStatus, BindingWorkerStatus } from './binding.cjs'
import { type Family, type HistogramData, type Labels, exposition, quantile } from './metrics.js'
import type { RuntimeInfo } from './runtime.js'
import type { CacheStatus, GenerationStatus, ModelKind, ModelStatus, PoolStatus, WorkerStatus } from './types.js'

/** One read of the native pool (its counters and state, and its histograms per model) and of
 * the result cache's counters, when there is one. */
export interface Snapshot {
  status: BindingStatus
  histograms: BindingModelHistograms[]
  cache?: CacheStatus
}

/** What the mapping needs to know of the pool besides the snapshot. */
export interface StatusContext {
  /** Name, path and output settings of each model, by index. */
  models: readonly {
    name: string
    path: string
    kind: ModelKind
    pooling: ModelStatus['pooling']
    normalize: boolean
  }[]
  /** `performance.now()` when the pool started, for rates and utilisation. */
  started: number
  /** The default model. */
  model: PoolStatus['model']
  /** The ONNX Runtime library in use. */
  runtime: RuntimeInfo
}

/** {@link PoolStatus} of `snapshot`, with rates over the time from `context.started` to `now`. */
export function toStatus(snapshot: Snapshot, context: StatusContext, now = performance.now()): PoolStatus {
  const { status: native, histograms } = snapshot
  const lifetimeMs = Math.max(now - context.started, 1)
  const names = context.models.map((m) => m.name)
  const workers = native.workers.map((w): WorkerStatus => ({
    id: w.id,
    device: w.device,
    provider: w.provider,
    ...(w.fallback ? { fallback: w.fallback } : {}),
    ...(w.failure ? { failure: w.failure } : {}),
    state: w.state,
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
    spreadBatches: w.spreadBatches,
    meanBatchSize: w.batches > 0 ? w.items / w.batches : 0,
    tokenBudget: w.tokenBudget,
    busyMs: w.busyMs,
    utilisation: Math.min(100, (100 * w.busyMs) / lifetimeMs),
    itemsPerSecond: w.itemsPerSecond,
  }))
  const models: Record<string, ModelStatus> = {}
  native.models.forEach((m, index) => {
    const ms = (histogram: HistogramData | null | undefined, q: number) => {
      const seconds = histogram ? quantile(histogram, q) : null
      return seconds === null ? null : seconds * 1000
    }
    const latency = (q: number) => ms(histograms[index].endToEnd, q)
    const h = histograms[index]
    const generation: GenerationStatus | null = m.generation
      ? {
          layout: m.generation.layout,
          cohorts: m.generation.cohorts,
          rows: m.generation.rows,
          tokens: m.generation.tokens,
          steps: m.generation.steps,
          tokensPerSecond: m.generation.tokensPerSecond,
          timeToFirstTokenMs: { p50: ms(h.firstToken, 0.5), p99: ms(h.firstToken, 0.99) },
          timePerTokenMs: { p50: ms(h.perToken, 0.5), p99: ms(h.perToken, 0.99) },
        }
      : null
    models[m.name] = {
      path: context.models[index].path,
      kind: m.kind,
      generation,
      pooling: context.models[index].pooling,
      normalize: context.models[index].normalize,
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
    model: { ...context.model },
    runtime: context.runtime,
    cache: snapshot.cache === undefined ? null : { ...snapshot.cache },
  }
}

/** The Prometheus text exposition of `snapshot` (see `Pool.metrics`). */
export function toMetrics(snapshot: Snapshot, context: StatusContext, now = performance.now()): string {
  const { status: native, histograms } = snapshot
  const status = toStatus(snapshot, context, now)
  const models = context.models.map((m, index) => ({ name: m.name, index }))
  const worker = (w: WorkerStatus): Labels => ({ device: w.device, worker: String(w.id) })
  const perWorker = (pick: (w: WorkerStatus) => number) =>
    status.workers.map((w) => ({ labels: worker(w), value: pick(w) }))
  const perModelWorker = (pick: (w: BindingWorkerStatus, model: number) => number) =>
    models.flatMap((m) =>
      status.workers.map((w) => ({
        labels: { model: m.name, ...worker(w) },
        value: pick(native.workers[w.id], m.index),
      })),
    )
  const perModel = (pick: (m: ModelStatus) => number) =>
    models.map((m) => ({ labels: { model: m.name }, value: pick(status.models[m.name]) }))
  const modelHistogram = (pick: (h: BindingModelHistograms) => HistogramData) =>
    models.map((m) => ({ labels: { model: m.name }, value: pick(histograms[m.index]) }))
  const workerHistogram = (pick: (h: BindingModelHistograms) => HistogramData[]) =>
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
      name: 'inferpool_spread_batches_total',
      help: 'Batches that started while every other worker was idle and ran over their cores too.',
      type: 'counter',
      samples: perWorker((w) => w.spreadBatches),
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
      help: 'Estimated memory of the models a worker holds and of the caches of the prompts it decodes.',
      type: 'gauge',
      samples: perWorker((w) => w.memoryUsedBytes),
    },
    {
      name: 'inferpool_token_budget',
      help: 'Current token budget, padded tokens per batch.',
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
    ...generationFamilies(status, models, histograms),
  ]
  if (snapshot.cache !== undefined) families.push(...cacheFamilies(snapshot.cache))
  return exposition(families)
}

/** The seq2seq models' decoding as metric families (none when the pool has no such model). */
function generationFamilies(
  status: PoolStatus,
  models: { name: string; index: number }[],
  histograms: BindingModelHistograms[],
): Family[] {
  const seq2seq = models.filter((m) => status.models[m.name].generation !== null)
  if (seq2seq.length === 0) return []
  const per = (pick: (g: GenerationStatus) => number) =>
    seq2seq.map((m) => ({ labels: { model: m.name }, value: pick(status.models[m.name].generation!) }))
  const histogram = (pick: (h: BindingModelHistograms) => HistogramData | null | undefined) =>
    seq2seq.flatMap((m) => {
      const value = pick(histograms[m.index])
      return value ? [{ labels: { model: m.name }, value }] : []
    })
  return [
    {
      name: 'inferpool_generated_tokens_total',
      help: 'Tokens generated.',
      type: 'counter',
      samples: per((g) => g.tokens),
    },
    { name: 'inferpool_decode_steps_total', help: 'Decoder steps run.', type: 'counter', samples: per((g) => g.steps) },
    { name: 'inferpool_cohorts', help: 'Cohorts decoding now.', type: 'gauge', samples: per((g) => g.cohorts) },
    { name: 'inferpool_generating_rows', help: 'Prompts decoding now.', type: 'gauge', samples: per((g) => g.rows) },
    {
      name: 'inferpool_time_to_first_token_seconds',
      help: 'Per prompt: from admitted to its first token.',
      type: 'histogram',
      samples: histogram((h) => h.firstToken),
    },
    {
      name: 'inferpool_time_per_token_seconds',
      help: "Per token after a prompt's first: the time since its previous token.",
      type: 'histogram',
      samples: histogram((h) => h.perToken),
    },
  ]
}

/** The result cache's counters as metric families. */
function cacheFamilies(cache: CacheStatus): Family[] {
  const one = (value: number) => [{ labels: {}, value }]
  return [
    {
      name: 'inferpool_cache_hits_total',
      help: 'Texts answered without running the model for them (cached, or run by another call).',
      type: 'counter',
      samples: one(cache.hits),
    },
    {
      name: 'inferpool_cache_misses_total',
      help: 'Texts handed to the model.',
      type: 'counter',
      samples: one(cache.misses),
    },
    {
      name: 'inferpool_cache_entries',
      help: 'Texts held by the result cache.',
      type: 'gauge',
      samples: one(cache.entries),
    },
  ]
}
