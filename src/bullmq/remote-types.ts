// The public types of `RemotePool`: its call options, and what its status reports.

import type { Priority, StreamOptions } from '../types.js'

/** Options of {@link RemotePool.embed}. */
export interface RemoteEmbedOptions {
  /** Name of the model (one of {@link RemotePoolOptions.models}). Default: the default model. */
  model?: string
  /** `'interactive'` jobs are taken before `'bulk'` ones (the default). */
  priority?: Priority
  /** Aborting rejects the call with `ABORTED` at once; its jobs not started are removed. */
  signal?: AbortSignal
  /** Rejects the call with `TIMEOUT` after this many milliseconds; its jobs not started are removed. */
  timeoutMs?: number
}

/** Options of {@link RemotePool.embedStream}. */
export type RemoteStreamOptions = Omit<StreamOptions, 'signal'> & { signal?: AbortSignal }

/** One model's queue in {@link RemoteStatus}. */
export interface RemoteQueueStatus {
  /** Workers connected to the queue now. */
  workers: number
  /** Jobs waiting for a worker (all of them carry a priority). */
  waiting: number
  /** Jobs running on a worker. */
  active: number
  /** Jobs waiting out a retry's back-off. */
  delayed: number
  /** Finished jobs still in Redis (results not yet taken, or kept for a client that went away). */
  completed: number
  /** Failed jobs still in Redis. */
  failed: number
}

/** What {@link RemotePool.status} returns. */
export interface RemoteStatus {
  /** Calls of this client not yet answered. */
  outstandingCalls: number
  /** Jobs of this client sent and not yet finished. */
  outstandingJobs: number
  /** Calls made by this client. */
  calls: number
  /** Texts sent by this client. */
  texts: number
  /** Jobs sent by this client. */
  jobs: number
  /** Per model: its queue, as every client and worker see it. */
  models: Record<string, RemoteQueueStatus>
}
