// `serveQueue`: a local pool consumes the BullMQ queues of the models it serves. Each job's texts
// go to `pool.embed`, which batches them with the texts of every other active job, whoever sent
// them; the result goes back as the job's return value.
//
// Failures, in BullMQ's terms:
// 1. `INFERENCE_FAILED`: the attempt fails; BullMQ retries the job with the client's back-off.
// 2. `OVERLOADED`: the job goes back to the queue and the queue is rate-limited for a moment
//    (`Worker.RateLimitError`); no attempt is spent.
// 3. Anything else: `UnrecoverableError`, the job fails for good with `CODE: message`.
// 4. A worker that dies (or stops) loses its jobs' locks; the stalled-job check of any worker
//    puts them back on the queue, and the lock check at completion refuses a late result from
//    the worker that lost them: each job completes once.

import { hostname } from 'node:os'

import { type Job, Queue, UnrecoverableError, Worker } from 'bullmq'

import { PoolError } from '../errors.js'
import type { Pool } from '../pool.js'
import { type ResolvedServeOptions, type ServeQueueOptions, resolveServeOptions, stoppable } from './options.js'
import {
  type JobData,
  type JobResult,
  checkJobData,
  disposition,
  encodeResult,
  failureReason,
  queueName,
  settleWithin,
  withDeadline,
} from './wire.js'

/** How long closing the connections of a worker that could not connect may take. */
const CLOSE_MS = 5000

/** Counters of a {@link QueueServer}, over all its models. */
export interface QueueServerStats {
  /** Jobs completed. */
  completed: number
  /** Attempts failed (retried or not). */
  failed: number
  /** Jobs put back because the pool was full. */
  overloaded: number
  /** Texts embedded for completed jobs. */
  texts: number
  /** Jobs running now. */
  active: number
}

/** What {@link serveQueue} returns: the running workers of one pool. */
export interface QueueServer {
  /** The models served, each from its own queue. */
  readonly models: string[]
  /** This worker's name, as stored on the jobs it runs. */
  readonly name: string
  /** Counters since the start. */
  stats(): QueueServerStats
  /**
   * Stops taking jobs, waits for the active ones to finish and disconnects. The pool stays
   * open: close it afterwards. Calling it again returns the same promise.
   */
  close(): Promise<void>
}

/**
 * Serves `pool` to `RemotePool` clients: one BullMQ worker per model consumes that model's
 * queue, `concurrency` jobs at a time, and resolves once every worker is connected.
 *
 * ```ts
 * const pool = await Pool.create({ devices: 'auto' })
 * const server = await serveQueue(pool, { connection: 'redis://redis:6379' })
 * process.once('SIGTERM', async () => { await server.close(); await pool.close() })
 * ```
 *
 * @throws {PoolError} `INVALID_INPUT` for malformed options or a model the pool does not have,
 * `REMOTE_UNAVAILABLE` when Redis cannot be reached within `connectTimeoutMs`.
 */
export async function serveQueue(pool: Pool, options: ServeQueueOptions): Promise<QueueServer> {
  const settings = resolveServeOptions(options, `${hostname()}:${process.pid}`)
  const models = settings.models ?? pool.models
  for (const model of models) {
    if (!pool.models.includes(model)) {
      throw new PoolError('INVALID_INPUT', `model ${JSON.stringify(model)} is not one of the pool's models`)
    }
  }
  const stats: QueueServerStats = { completed: 0, failed: 0, overloaded: 0, texts: 0, active: 0 }
  const { connection, giveUp } = stoppable(settings.connection)
  const served = models.map((model) => serveModel(pool, model, { ...settings, connection }, stats))
  const closeAll = () => Promise.all(served.map((s) => s.close())).then(() => undefined)
  try {
    await withDeadline(
      Promise.all(served.map((s) => s.ready())),
      settings.connectTimeoutMs,
      'Redis did not answer the workers',
    )
  } catch (error) {
    giveUp()
    await settleWithin([closeAll()], CLOSE_MS)
    throw error
  }
  let closing: Promise<void> | undefined
  return {
    models: [...models],
    name: settings.name,
    stats: () => ({ ...stats }),
    close: () => (closing ??= closeAll()),
  }
}

/** The worker of one model, with the queue handle it rate-limits through. */
function serveModel(pool: Pool, model: string, settings: ResolvedServeOptions, stats: QueueServerStats) {
  const name = queueName(model)
  const connection = settings.connection
  const queue = new Queue(name, { connection, prefix: settings.prefix })
  const processor = async (job: Job<JobData, JobResult>): Promise<JobResult> => {
    stats.active++
    try {
      const { texts, priority } = checkJobData(job.data)
      const vectors = await pool.embed(texts, { model, priority })
      stats.completed++
      stats.texts += texts.length
      return encodeResult(vectors)
    } catch (error) {
      const failure = error instanceof PoolError ? error : new PoolError('INTERNAL', String(error))
      switch (disposition(failure.code, job.attemptsStarted, settings.maxOverloadedStarts)) {
        case 'rate-limit':
          stats.overloaded++
          await queue.rateLimit(settings.overloadDelayMs)
          throw Worker.RateLimitError()
        case 'retry':
          stats.failed++
          throw new Error(failureReason(failure))
        case 'fail':
          stats.failed++
          throw new UnrecoverableError(failureReason(failure))
      }
    } finally {
      stats.active--
    }
  }
  const worker = new Worker<JobData, JobResult>(name, processor, {
    connection,
    prefix: settings.prefix,
    name: settings.name,
    concurrency: settings.concurrency,
    lockDuration: settings.lockDurationMs,
    stalledInterval: settings.stalledIntervalMs,
    maxStalledCount: settings.maxStalledCount,
  })
  // Connection errors are retried by the client library; a late completion refused by the lock
  // check is the design working. Neither may crash the process through an unhandled 'error'.
  const ignore = () => undefined
  worker.on('error', ignore)
  queue.on('error', ignore)
  return {
    ready: () => Promise.all([worker.waitUntilReady(), queue.waitUntilReady()]),
    close: async () => {
      await worker.close()
      await queue.close()
    },
  }
}
