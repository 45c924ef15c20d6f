import { describe, expect, it } from 'vitest'

import type {
  BindingHistogram,
  BindingModelHistograms,
  BindingProvider,
  BindingWorkerState,
  BindingWorkerStatus,
  BindingModelKind,
} from '../src/binding.cjs'
import { type Snapshot, type StatusContext, toMetrics, toStatus } from '../src/status.js'

// Status and metrics mapped from one made-up native snapshot: no native pool.

const histogram = (counts: number[] = [0, 0], sum = 0): BindingHistogram => ({
  bounds: [0.01, 0.1],
  counts,
  count: counts.at(-1) ?? 0,
  sum,
})

const histograms = (endToEnd = histogram()): BindingModelHistograms => ({
  queueWait: histogram(),
  tokenize: histogram(),
  endToEnd,
  inference: [histogram(), histogram()],
  batchSize: [histogram([1, 2], 5), histogram()],
})

const worker = (id: number, fields: Partial<BindingWorkerStatus>): BindingWorkerStatus => ({
  id,
  device: 'cpu',
  provider: 'cpu' as BindingProvider,
  state: 'idle' as BindingWorkerState,
  loadedModels: [],
  items: 0,
  batches: 0,
  errors: 0,
  steals: 0,
  spreadBatches: 0,
  loads: 0,
  switches: 0,
  evictions: 0,
  memoryUsed: 0,
  memoryBudget: Infinity,
  tokenBudget: 16384,
  busyMs: 0,
  itemsPerSecond: 0,
  modelItems: [0, 0],
  modelBatches: [0, 0],
  ...fields,
})

const snapshot: Snapshot = {
  status: {
    outstanding: 10,
    inFlight: 4,
    waiting: 3,
    workers: [
      worker(0, {
        device: 'cuda:0',
        provider: 'cpu' as BindingProvider,
        fallback: 'no CUDA provider for cuda:0',
        state: 'busy' as BindingWorkerState,
        loadedModels: [1],
        items: 30,
        batches: 3,
        busyMs: 500,
        modelItems: [0, 30],
        modelBatches: [0, 3],
      }),
      worker(1, { items: 10, batches: 5, busyMs: 5000, loadedModels: [0, 1], modelItems: [10, 0] }),
    ],
    models: [
      {
        name: 'a',
        maxLength: 128,
        loadedOn: [1],
        outstanding: 6,
        inFlight: 4,
        items: 10,
        loads: 1,
        unloads: 0,
        evictions: 0,
        memoryBytes: 100,
        priority: 0,
        kind: 'embedding' as BindingModelKind,
      },
      {
        name: 'b',
        dimension: 8,
        maxLength: 64,
        loadedOn: [0, 1],
        outstanding: 1,
        inFlight: 2,
        items: 30,
        loads: 2,
        unloads: 1,
        evictions: 1,
        memoryBytes: 200,
        priority: 1,
        kind: 'embedding' as BindingModelKind,
      },
    ],
  },
  histograms: [histograms(), histograms(histogram([2, 4], 0.2))],
}

const context: StatusContext = {
  models: [
    { name: 'a', path: '/models/a', kind: 'embedding', pooling: 'mean', normalize: true },
    { name: 'b', path: '/models/b', kind: 'embedding', pooling: 'cls', normalize: false },
  ],
  started: 0,
  model: { path: '/models/a', dimension: 384, maxLength: 128 },
  runtime: { path: '/ort/libonnxruntime.so', version: '1.29.0', source: 'bundled' },
}

describe('toStatus', () => {
  const status = toStatus(snapshot, context, 1000)

  it('maps the pool, with rates over its lifetime', () => {
    expect(status).toMatchObject({
      outstanding: 10,
      queued: 6,
      inFlight: 4,
      waiting: 3,
      items: 40,
      itemsPerSecond: 40,
      model: context.model,
      runtime: context.runtime,
    })
    expect(status.model).not.toBe(context.model)
  })

  it('maps each worker, with model names, and caps utilisation at 100', () => {
    expect(status.workers[0]).toMatchObject({
      device: 'cuda:0',
      provider: 'cpu',
      fallback: 'no CUDA provider for cuda:0',
      state: 'busy',
      loadedModels: ['b'],
      meanBatchSize: 10,
      utilisation: 50,
    })
    expect(status.workers[1]).toMatchObject({ loadedModels: ['a', 'b'], meanBatchSize: 2, utilisation: 100 })
    expect(status.workers[1]).not.toHaveProperty('fallback')
    expect(status.workers[1]).not.toHaveProperty('failure')
  })

  it('maps each model by name, with its latency from the histogram', () => {
    expect(status.models.a).toMatchObject({
      path: '/models/a',
      pooling: 'mean',
      normalize: true,
      dimension: null,
      queued: 2,
      latencyMs: { p50: null, p99: null },
    })
    expect(status.models.b).toMatchObject({
      path: '/models/b',
      pooling: 'cls',
      normalize: false,
      dimension: 8,
      queued: 0,
      loadedOn: [0, 1],
    })
    expect(status.models.b.latencyMs.p50).toBeCloseTo(10)
    expect(status.models.b.latencyMs.p99).toBeCloseTo(98.2)
  })
})

describe('toMetrics', () => {
  const text = toMetrics(snapshot, context, 1000)

  it('labels per model and worker from the same snapshot', () => {
    expect(text).toContain('inferpool_items_total{model="b",device="cuda:0",worker="0"} 30')
    expect(text).toContain('inferpool_items_total{model="a",device="cpu",worker="1"} 10')
    expect(text).toContain('inferpool_model_loaded{model="a",device="cuda:0",worker="0"} 0')
    expect(text).toContain('inferpool_model_loaded{model="a",device="cpu",worker="1"} 1')
    expect(text).toContain('inferpool_queued_items{model="a"} 2')
    expect(text).toContain('inferpool_busy_seconds_total{device="cpu",worker="1"} 5')
    expect(text).toContain('inferpool_request_duration_seconds_count{model="b"} 4')
    expect(text).toContain('inferpool_batch_size_sum{model="a",device="cuda:0",worker="0"} 5')
    expect(text.endsWith('\n')).toBe(true)
  })
})
