// `RemotePool`: the calls of `Pool.embed` sent through BullMQ to the workers of `serveQueue`.
//
// A call's life:
// 1. Its texts join the open job of its model and priority; a job is sent once it holds
//    `maxJobTexts` texts or `coalesceMs` after it opened, so concurrent calls share jobs.
// 2. The job is added under an id chosen here, registered before it is added, so that its
//    completion cannot be missed however fast a worker is.
// 3. One `QueueEvents` listener per model (a blocking read of the queue's event stream) hears
//    `completed` and `failed`, hands each caller its slice, and removes the job: a result is
//    removed from Redis once delivered.
// 4. A check every `checkIntervalMs` covers what an event stream cannot: it reads the jobs whose
//    events were missed (trimmed, or sent while the listener reconnected), fails the calls of a
//    job lost from Redis, and counts the workers; when none has been connected for
//    `unavailableAfterMs`, the waiting calls fail with `REMOTE_UNAVAILABLE`.
// 5. A caller that aborts or times out is answered at once. Once a job has no caller left, it
//    is removed if no worker holds it yet; otherwise its result is dropped when it comes.

import { randomUUID } from 'node:crypto'

import { Queue, QueueEvents } from 'bullmq'

import { aborted, timedOut } from '../call.js'
import { checkKeys } from '../check.js'
import { PoolError } from '../errors.js'
import { type Family, type HistogramData, exposition } from '../metrics.js'
import { type ModelChoice, checkCall } from '../options.js'
import { embedStream } from '../stream.js'
import type { Priority, StreamItem, StreamOptions } from '../types.js'
import { type ResolvedRemoteOptions, type RemotePoolOptions, resolveRemoteOptions, stoppable } from './options.js'
import {
  BULLMQ_PRIORITY,
  JOB_NAME,
  type JobData,
  decodeResult,
  failureError,
  queueName,
  settleWithin,
  withDeadline,
} from './wire.js'

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

/** One call waiting for its vectors. */
interface Caller {
  vectors: Float32Array[]
  /** Texts not delivered yet. */
  remaining: number
  /** The jobs holding its texts. */
  jobs: Set<JobEntry>
  settled: boolean
  /** Resolves or rejects the call's promise and releases its signal and timer. */
  finish: (error: PoolError | undefined) => void
}

/** A run of one caller's texts inside a job. */
interface Segment {
  caller: Caller
  /** Index of its first text in the caller's texts. */
  at: number
  /** Index of its first text in the job's texts. */
  from: number
  count: number
}

/** A job, open (still taking texts) or sent. */
interface JobEntry {
  id: string
  priority: Priority
  texts: string[]
  segments: Segment[]
  sent: boolean
  sentAt: number
}

/** How long closing the connections of a client that could not connect may take. */
const CLOSE_MS = 5000

/** Latency buckets of calls, seconds. */
const LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

/** The counters of one model. */
interface Counters {
  calls: number
  texts: number
  jobs: number
  errors: Map<string, number>
  latency: HistogramData
}

/** One model's queue, its listener, its jobs. */
interface Channel {
  model: string
  queue: Queue<JobData>
  events: QueueEvents
  /** Jobs sent and not finished, by id. */
  jobs: Map<string, JobEntry>
  /** The job taking texts, per priority, and its send timer. */
  open: Map<Priority, { job: JobEntry; timer: NodeJS.Timeout }>
  /** When a worker was last seen (connected, or starting or finishing a job). */
  seenAt: number | undefined
  /** When the workers were last counted. */
  countedAt: number
  counters: Counters
}

const REMOTE_EMBED_KEYS: Record<keyof RemoteEmbedOptions, true> = {
  model: true,
  priority: true,
  signal: true,
  timeoutMs: true,
}

const asyncDispose: typeof Symbol.asyncDispose =
  Symbol.asyncDispose ?? (Symbol.for('nodejs.asyncDispose') as typeof Symbol.asyncDispose)

/**
 * A client of inferpool workers anywhere (see `serveQueue` and `inferpool worker`): `embed` and
 * `embedStream` as on a local `Pool`, run by whichever workers serve the model, batched with
 * the calls of every other client.
 *
 * ```ts
 * const remote = await RemotePool.create({ connection: 'redis://redis:6379' })
 * const [a, b] = await remote.embed(['first text', 'second text'])
 * await remote.close()
 * ```
 */
export class RemotePool {
  readonly #settings: ResolvedRemoteOptions
  readonly #channels: Map<string, Channel>
  readonly #choice: ModelChoice
  /** Calls not yet answered. */
  readonly #callers = new Set<Caller>()
  /** Resolved when the last call is answered (a draining close waits for it). */
  #whenIdle: (() => void)[] = []
  readonly #checker: NodeJS.Timeout
  #checking = false
  #closed = false
  #closing: Promise<void> | undefined

  private constructor(settings: ResolvedRemoteOptions, channels: Map<string, Channel>) {
    this.#settings = settings
    this.#channels = channels
    this.#choice = { names: settings.models, defaultModel: settings.models.indexOf(settings.defaultModel) }
    this.#checker = setInterval(() => void this.#checkAll(), settings.checkIntervalMs)
    this.#checker.unref()
    for (const channel of channels.values()) this.#listen(channel)
  }

  /**
   * Connects to Redis and starts one event listener per model; resolves once they are ready.
   *
   * @throws {PoolError} `INVALID_INPUT` for malformed options, `REMOTE_UNAVAILABLE` when Redis
   * does not answer within `connectTimeoutMs`.
   */
  static async create(options: RemotePoolOptions): Promise<RemotePool> {
    const settings = resolveRemoteOptions(options)
    const { prefix } = settings
    const { connection, giveUp } = stoppable(settings.connection)
    const channels = new Map<string, Channel>()
    for (const model of settings.models) {
      const name = queueName(model)
      const queue = new Queue<JobData>(name, {
        connection,
        prefix,
        streams: { events: { maxLen: settings.eventsMaxLen } },
      })
      const events = new QueueEvents(name, { connection, prefix })
      // Connection errors are retried by the client library and surface in the calls; an
      // unhandled 'error' event would crash the process.
      queue.on('error', () => undefined)
      events.on('error', () => undefined)
      channels.set(model, {
        model,
        queue,
        events,
        jobs: new Map(),
        open: new Map(),
        seenAt: undefined,
        countedAt: 0,
        counters: { calls: 0, texts: 0, jobs: 0, errors: new Map(), latency: emptyHistogram() },
      })
    }
    const all = [...channels.values()]
    try {
      await withDeadline(
        Promise.all(all.flatMap((c) => [c.queue.waitUntilReady(), c.events.waitUntilReady()])),
        settings.connectTimeoutMs,
        'Redis did not answer',
      )
    } catch (error) {
      giveUp()
      await settleWithin(
        all.flatMap((c) => [c.queue.close(), c.events.close()]),
        CLOSE_MS,
      )
      throw error
    }
    return new RemotePool(settings, channels)
  }

  /** Names of the models, as given. */
  get models(): string[] {
    return [...this.#settings.models]
  }

  /** Whether {@link RemotePool.close} has been called. */
  get closed(): boolean {
    return this.#closed
  }

  /**
   * Embeds `texts` on the workers serving the model; resolves with one `Float32Array` per text,
   * in input order.
   *
   * @throws {PoolError} `INVALID_INPUT` for malformed texts or options, `POOL_CLOSED` after
   * {@link RemotePool.close}, `REMOTE_UNAVAILABLE` when no worker serving the model has been
   * seen for `unavailableAfterMs` (or Redis cannot take the job), `ABORTED`, `TIMEOUT`, and
   * what the workers' pools raise (`INFERENCE_FAILED` once the retries are spent, `OVERLOADED`,
   * `MODEL_UNAVAILABLE`, …).
   */
  async embed(texts: readonly string[], options: RemoteEmbedOptions = {}): Promise<Float32Array[]> {
    checkKeys(options, REMOTE_EMBED_KEYS)
    return this.#embed(texts, options)
  }

  /**
   * Embeds texts as they come from `source` and yields `{ index, embedding }` in source order,
   * never reading more than `highWaterMark` texts ahead of the consumer (see `Pool.embedStream`).
   *
   * @throws {PoolError} `INVALID_INPUT` when the source yields something other than a string,
   * and every code {@link RemotePool.embed} throws.
   */
  embedStream(
    source: Iterable<string> | AsyncIterable<string>,
    options: RemoteStreamOptions = {},
  ): AsyncGenerator<StreamItem, void, undefined> {
    return embedStream(source, options, { models: this.#choice, embed: (texts, o) => this.#embed(texts, o) })
  }

  async #embed(texts: readonly string[], options: RemoteEmbedOptions): Promise<Float32Array[]> {
    const call = checkCall(texts, options, this.#choice)
    const { signal, timeoutMs } = call
    const channel = this.#channels.get(this.#choice.names[call.model]) as Channel
    const started = performance.now()
    channel.counters.calls++
    try {
      if (this.#closed) throw new PoolError('POOL_CLOSED', 'the remote pool is closed')
      if (signal?.aborted) throw aborted(signal)
      if (call.texts.length === 0) return []
      await this.#expectWorker(channel)
      if (signal?.aborted) throw aborted(signal)
      if (this.#closed) throw new PoolError('POOL_CLOSED', 'the remote pool is closed')
      const vectors = await new Promise<Float32Array[]>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined
        const onAbort = () => this.#abandon(caller, aborted(signal as AbortSignal))
        const caller: Caller = {
          vectors: Array.from({ length: call.texts.length }),
          remaining: call.texts.length,
          jobs: new Set(),
          settled: false,
          finish: (error) => {
            caller.settled = true
            this.#callers.delete(caller)
            if (this.#callers.size === 0) for (const wake of this.#whenIdle.splice(0)) wake()
            clearTimeout(timer)
            signal?.removeEventListener('abort', onAbort)
            if (error === undefined) resolve(caller.vectors)
            else reject(error)
          },
        }
        this.#callers.add(caller)
        channel.counters.texts += call.texts.length
        this.#enqueue(channel, call.priority, caller, call.texts)
        signal?.addEventListener('abort', onAbort, { once: true })
        if (timeoutMs !== undefined) timer = setTimeout(() => this.#abandon(caller, timedOut(timeoutMs)), timeoutMs)
      })
      observe(channel.counters.latency, (performance.now() - started) / 1000)
      return vectors
    } catch (error) {
      const code = error instanceof PoolError ? error.code : 'INTERNAL'
      channel.counters.errors.set(code, (channel.counters.errors.get(code) ?? 0) + 1)
      throw error
    }
  }

  /**
   * Resolves when a worker serving `channel`'s model has been seen within `unavailableAfterMs`,
   * counting the workers if that is not known.
   *
   * @throws {PoolError} `REMOTE_UNAVAILABLE` when none has.
   */
  async #expectWorker(channel: Channel): Promise<void> {
    if (this.#workerSeen(channel)) return
    await this.#countWorkers(channel)
    if (this.#workerSeen(channel)) return
    throw new PoolError(
      'REMOTE_UNAVAILABLE',
      `no worker serving model ${JSON.stringify(channel.model)} has been seen` +
        (channel.seenAt === undefined ? '' : ` for ${Date.now() - channel.seenAt} ms`) +
        ' (start one with `inferpool worker --redis <url>`)',
    )
  }

  #workerSeen(channel: Channel): boolean {
    return channel.seenAt !== undefined && Date.now() - channel.seenAt <= this.#settings.unavailableAfterMs
  }

  /** Counts the workers connected to `channel`'s queue; a failed count counts none. */
  async #countWorkers(channel: Channel): Promise<void> {
    channel.countedAt = Date.now()
    const count = await channel.queue.getWorkersCount().catch(() => 0)
    if (count > 0) channel.seenAt = Date.now()
  }

  /** Adds `texts` of `caller` to the open jobs of `channel` and `priority`, sending full ones. */
  #enqueue(channel: Channel, priority: Priority, caller: Caller, texts: readonly string[]): void {
    const max = this.#settings.maxJobTexts
    let at = 0
    while (at < texts.length) {
      let open = channel.open.get(priority)
      if (open === undefined) {
        const job: JobEntry = { id: randomUUID(), priority, texts: [], segments: [], sent: false, sentAt: 0 }
        open = { job, timer: setTimeout(() => this.#send(channel, priority), this.#settings.coalesceMs) }
        channel.open.set(priority, open)
      }
      const { job } = open
      const count = Math.min(max - job.texts.length, texts.length - at)
      job.segments.push({ caller, at, from: job.texts.length, count })
      for (let i = 0; i < count; i++) job.texts.push(texts[at + i])
      caller.jobs.add(job)
      at += count
      if (job.texts.length >= max) this.#send(channel, priority)
    }
  }

  /** Sends the open job of `channel` and `priority`, unless every caller of it has gone. */
  #send(channel: Channel, priority: Priority): void {
    const open = channel.open.get(priority)
    if (open === undefined) return
    channel.open.delete(priority)
    clearTimeout(open.timer)
    const { job } = open
    if (!job.segments.some((s) => !s.caller.settled)) return
    job.sent = true
    job.sentAt = Date.now()
    channel.jobs.set(job.id, job)
    channel.counters.jobs++
    const keep = { age: this.#settings.keepResultsSeconds }
    channel.queue
      .add(
        JOB_NAME,
        { texts: job.texts, priority },
        {
          jobId: job.id,
          priority: BULLMQ_PRIORITY[priority],
          attempts: this.#settings.attempts,
          backoff: { type: 'exponential', delay: this.#settings.backoffMs },
          removeOnComplete: keep,
          removeOnFail: keep,
        },
      )
      .catch((error: unknown) => {
        const message = error instanceof Error ? error.message : String(error)
        this.#finishJob(channel, job, new PoolError('REMOTE_UNAVAILABLE', `Redis did not take the job: ${message}`))
      })
  }

  /** Wires `channel`'s event listener to the jobs. */
  #listen(channel: Channel): void {
    const { events } = channel
    events.on('active', () => (channel.seenAt = Date.now()))
    events.on('completed', ({ jobId, returnvalue }) => {
      const job = channel.jobs.get(jobId)
      if (job === undefined) return
      channel.seenAt = Date.now()
      this.#finishJob(channel, job, undefined, returnvalue)
    })
    events.on('failed', ({ jobId, failedReason }) => {
      const job = channel.jobs.get(jobId)
      if (job !== undefined) this.#finishJob(channel, job, failureError(failedReason))
    })
  }

  /**
   * Settles `job` once: hands each live caller its slice of `result`, or `error`; then removes
   * the job from Redis (a no-op for a job Redis never took).
   */
  #finishJob(channel: Channel, job: JobEntry, error: PoolError | undefined, result?: unknown): void {
    if (!channel.jobs.delete(job.id)) return
    let failure = error
    let vectors: Float32Array[] = []
    if (failure === undefined) {
      try {
        vectors = decodeResult(result, job.texts.length)
      } catch (decodeError) {
        failure = decodeError as PoolError
      }
    }
    for (const { caller, at, from, count } of job.segments) {
      caller.jobs.delete(job)
      if (caller.settled) continue
      if (failure !== undefined) {
        caller.finish(failure)
        continue
      }
      for (let i = 0; i < count; i++) caller.vectors[at + i] = vectors[from + i]
      caller.remaining -= count
      if (caller.remaining === 0) caller.finish(undefined)
    }
    channel.queue.remove(job.id).catch(() => undefined)
  }

  /**
   * Answers `caller` with `error` now, and removes its jobs that have no other caller and that
   * no worker holds yet (a held job finishes, and its result is dropped).
   */
  #abandon(caller: Caller, error: PoolError): void {
    if (caller.settled) return
    caller.finish(error)
    for (const job of caller.jobs) {
      if (!job.sent || job.segments.some((s) => !s.caller.settled)) continue
      const channel = this.#channelOf(job)
      if (channel === undefined) continue
      channel.queue
        .remove(job.id)
        .then((removed) => {
          if (removed === 1) channel.jobs.delete(job.id)
        })
        .catch(() => undefined)
    }
  }

  #channelOf(job: JobEntry): Channel | undefined {
    for (const channel of this.#channels.values()) if (channel.jobs.has(job.id)) return channel
    return undefined
  }

  /** One round of step 4 over every model with jobs out; rounds never overlap. */
  async #checkAll(): Promise<void> {
    if (this.#checking) return
    this.#checking = true
    try {
      await Promise.all([...this.#channels.values()].map((channel) => this.#check(channel)))
    } finally {
      this.#checking = false
    }
  }

  async #check(channel: Channel): Promise<void> {
    if (channel.jobs.size === 0) return
    await this.#countWorkers(channel)
    const now = Date.now()
    const unavailable = !this.#workerSeen(channel)
    const due = [...channel.jobs.values()].filter((job) => now - job.sentAt >= this.#settings.checkIntervalMs)
    await Promise.all(
      due.map(async (job) => {
        if (unavailable) {
          // Removed when no worker took it; with Redis unreachable, failed all the same.
          const removed = await channel.queue.remove(job.id).catch(() => -1)
          if (removed !== 0) {
            const seen = channel.seenAt === undefined ? 'ever' : `for ${now - channel.seenAt} ms`
            this.#finishJob(
              channel,
              job,
              new PoolError(
                'REMOTE_UNAVAILABLE',
                `no worker serving model ${JSON.stringify(channel.model)} has been seen ${seen}`,
              ),
            )
          }
          return
        }
        const found = await channel.queue.getJob(job.id).catch(() => null)
        if (found === null || !channel.jobs.has(job.id)) return
        if (found === undefined) {
          this.#finishJob(channel, job, new PoolError('REMOTE_UNAVAILABLE', `job ${job.id} was lost from Redis`))
        } else if (found.finishedOn !== undefined && found.returnvalue != null) {
          this.#finishJob(channel, job, undefined, found.returnvalue)
        } else if (found.finishedOn !== undefined) {
          this.#finishJob(channel, job, failureError(found.failedReason ?? 'unknown failure'))
        }
      }),
    )
  }

  /**
   * This client's counters and, per model, its queue's job counts and connected workers.
   *
   * @throws {PoolError} `REMOTE_UNAVAILABLE` when Redis does not answer within `connectTimeoutMs`.
   */
  async status(): Promise<RemoteStatus> {
    const models: Record<string, RemoteQueueStatus> = {}
    let calls = 0
    let texts = 0
    let jobs = 0
    let outstandingJobs = 0
    await withDeadline(
      Promise.all(
        [...this.#channels.values()].map(async (channel) => {
          const [counts, workers] = await Promise.all([
            channel.queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'completed', 'failed'),
            channel.queue.getWorkersCount(),
          ])
          if (workers > 0) channel.seenAt = Date.now()
          models[channel.model] = {
            workers,
            waiting: (counts.waiting ?? 0) + (counts.prioritized ?? 0),
            active: counts.active ?? 0,
            delayed: counts.delayed ?? 0,
            completed: counts.completed ?? 0,
            failed: counts.failed ?? 0,
          }
        }),
      ),
      this.#settings.connectTimeoutMs,
      'Redis did not answer',
    )
    for (const channel of this.#channels.values()) {
      calls += channel.counters.calls
      texts += channel.counters.texts
      jobs += channel.counters.jobs
      outstandingJobs += channel.jobs.size
    }
    return { outstandingCalls: this.#callers.size, outstandingJobs, calls, texts, jobs, models }
  }

  /**
   * This client's counters, its call latency histogram and its queues' gauges, in the
   * Prometheus text format, labelled by model.
   *
   * @throws {PoolError} `REMOTE_UNAVAILABLE` when Redis does not answer within `connectTimeoutMs`.
   */
  async metrics(): Promise<string> {
    const status = await this.status()
    const channels = [...this.#channels.values()]
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

  /**
   * Stops the client. With `drain: true` (the default) the calls already made are answered
   * first (each within its own bounds: `timeoutMs`, `unavailableAfterMs`); with `drain: false`
   * they fail with `POOL_CLOSED` at once and their jobs not started are removed. Resolves once
   * the Redis connections are closed. Calling it again returns the same promise.
   *
   * @throws {PoolError} `INVALID_INPUT` for malformed options.
   */
  close(options: { drain?: boolean } = {}): Promise<void> {
    checkKeys(options, { drain: true })
    const drain = options.drain ?? true
    if (typeof drain !== 'boolean') return Promise.reject(new PoolError('INVALID_INPUT', 'drain must be a boolean'))
    this.#closed = true
    this.#closing ??= this.#close(drain)
    return this.#closing
  }

  async #close(drain: boolean): Promise<void> {
    for (const channel of this.#channels.values()) {
      // Deleting from a Map or a Set while iterating it visits every entry once.
      for (const priority of channel.open.keys()) this.#send(channel, priority)
    }
    if (!drain) {
      const closed = new PoolError('POOL_CLOSED', 'the remote pool was closed')
      for (const caller of this.#callers) this.#abandon(caller, closed)
    }
    if (this.#callers.size > 0) await new Promise<void>((resolve) => this.#whenIdle.push(resolve))
    clearInterval(this.#checker)
    await Promise.allSettled([...this.#channels.values()].flatMap((c) => [c.events.close(), c.queue.close()]))
  }

  /** `await using remote = await RemotePool.create(...)` closes (draining) at the end of the scope. */
  [asyncDispose](): Promise<void> {
    return this.close()
  }
}

function emptyHistogram(): HistogramData {
  return { bounds: LATENCY_BOUNDS, counts: LATENCY_BOUNDS.map(() => 0), count: 0, sum: 0 }
}

/** Adds one observation to a cumulative histogram. */
function observe(histogram: HistogramData, value: number): void {
  histogram.bounds.forEach((bound, i) => {
    if (value <= bound) histogram.counts[i]++
  })
  histogram.count++
  histogram.sum += value
}
