// The counters a `RemotePool` keeps per model, and their Prometheus exposition.

import { type Family, type HistogramData, exposition } from '../metrics.js'
import type { RemoteQueueStatus, RemoteStatus } from './remote-types.js'

/** Latency buckets of calls, seconds. */
const LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

/** The counters of one model. */
export interface Counters {
  calls: number
  texts: number
  jobs: number
  errors: Map<string, number>
  latency: HistogramData
}

/** The counters of a model before its first call. */
export function emptyCounters(): Counters {
  return { calls: 0, texts: 0, jobs: 0, errors: new Map(), latency: emptyHistogram() }
}

function emptyHistogram(): HistogramData {
  return { bounds: LATENCY_BOUNDS, counts: LATENCY_BOUNDS.map(() => 0), count: 0, sum: 0 }
}

/** Adds one observation to a cumulative histogram. */
export function observe(histogram: HistogramData, value: number): void {
  histogram.bounds.forEach((bound, i) => {
    if (value <= bound) histogram.counts[i]++
  })
  histogram.count++
  histogram.sum += value
}

/**
 * The counters of `channels`, their call latency histograms and, from `status`, their queues'
 * gauges, in the Prometheus text format, labelled by model.
 */
export function remoteExposition(
  channels: readonly { model: string; counters: Counters }[],
  status: RemoteStatus,
): string {
  const counter = (name: string, help: string, pick: (c: Counters) => number): Family => ({
    name,
    help,
    type: 'counter',
    samples: channels.map((c) => ({ labels: { model: c.model }, value: pick(c.counters) })),
  })
  const queue = (name: string, help: string, pick: (q: RemoteQueueStatus) => number): Family => ({
    name,
    help,
    type: 'gauge',
    samples: channels.map((c) => ({ labels: { model: c.model }, value: pick(status.models[c.model]) })),
  })
  return exposition([
    counter('inferpool_remote_calls_total', 'Calls made by this client.', (c) => c.calls),
    counter('inferpool_remote_texts_total', 'Texts sent by this client.', (c) => c.texts),
    counter('inferpool_remote_jobs_total', 'Jobs sent by this client.', (c) => c.jobs),
    {
      name: 'inferpool_remote_errors_total',
      help: 'Calls of this client that failed, by error code.',
      type: 'counter',
      samples: channels.flatMap((c) =>
        [...c.counters.errors].map(([code, value]) => ({ labels: { model: c.model, code }, value })),
      ),
    },
    {
      name: 'inferpool_remote_call_duration_seconds',
      help: 'Latency of the calls of this client that succeeded, from call to answer.',
      type: 'histogram',
      samples: channels.map((c) => ({ labels: { model: c.model }, value: c.counters.latency })),
    },
    queue('inferpool_remote_workers', 'Workers connected to the queue.', (q) => q.workers),
    queue('inferpool_remote_queue_waiting', 'Jobs waiting for a worker.', (q) => q.waiting),
    queue('inferpool_remote_queue_active', 'Jobs running on a worker.', (q) => q.active),
    queue('inferpool_remote_queue_delayed', 'Jobs waiting out a retry back-off.', (q) => q.delayed),
  ])
}
