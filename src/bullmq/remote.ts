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
//
// Steps 1, 2 and 5 are kept in `jobs.ts`, steps 3 and 4 in `watch.ts`; this file is the facade.

import { Queue, QueueEvents } from 'bullmq'

import { aborted, timedOut } from '../call.js'
import { checkKeys } from '../check.js'
import { PoolError } from '../errors.js'
import { type ModelChoice, checkCall } from '../options.js'
import { embedStream } from '../stream.js'
import type { StreamItem } from '../types.js'
import { emptyCounters, observe, remoteExposition } from './counters.js'
import { type Caller, type Channel, JobBook } from './jobs.js'
import { type ResolvedRemoteOptions, type RemotePoolOptions, resolveRemoteOptions, stoppable } from './options.js'
import type { RemoteEmbedOptions, RemoteQueueStatus, RemoteStatus, RemoteStreamOptions } from './remote-types.js'
import { Watcher } from './watch.js'
import { type JobData, queueName, settleWithin, withDeadline } from './wire.js'

/** How long closing the connections of a client that could not connect may take. */
const CLOSE_MS = 5000

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
  readonly #book: JobBook
  readonly #watcher: Watcher
  #closed = false
  #closing: Promise<void> | undefined

  private constructor(settings: ResolvedRemoteOptions, channels: Map<string, Channel>) {
    this.#settings = settings
    this.#channels = channels
    this.#choice = { names: settings.models, defaultModel: settings.models.indexOf(settings.defaultModel) }
    this.#book = new JobBook(settings, channels)
    this.#watcher = new Watcher(settings, channels, this.#book)
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
        counters: emptyCounters(),
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
      await this.#watcher.expectWorker(channel)
      if (signal?.aborted) throw aborted(signal)
      if (this.#closed) throw new PoolError('POOL_CLOSED', 'the remote pool is closed')
      const vectors = await new Promise<Float32Array[]>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined
        const onAbort = () => this.#book.abandon(caller, aborted(signal as AbortSignal))
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
        this.#book.enqueue(channel, call.priority, caller, call.texts)
        signal?.addEventListener('abort', onAbort, { once: true })
        if (timeoutMs !== undefined)
          timer = setTimeout(() => this.#book.abandon(caller, timedOut(timeoutMs)), timeoutMs)
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
    return remoteExposition([...this.#channels.values()], status)
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
      for (const priority of channel.open.keys()) this.#book.send(channel, priority)
    }
    if (!drain) {
      const closed = new PoolError('POOL_CLOSED', 'the remote pool was closed')
      for (const caller of this.#callers) this.#book.abandon(caller, closed)
    }
    if (this.#callers.size > 0) await new Promise<void>((resolve) => this.#whenIdle.push(resolve))
    this.#watcher.stop()
    await Promise.allSettled([...this.#channels.values()].flatMap((c) => [c.events.close(), c.queue.close()]))
  }

  /** `await using remote = await RemotePool.create(...)` closes (draining) at the end of the scope. */
  [asyncDispose](): Promise<void> {
    return this.close()
  }
}
