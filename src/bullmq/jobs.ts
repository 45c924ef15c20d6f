// The jobs of a `RemotePool`: callers' texts coalesced into jobs, jobs sent to Redis, each
// caller handed its slice of a finished job, and jobs nobody waits for removed.

import { randomUUID } from 'node:crypto'

import type { Queue, QueueEvents } from 'bullmq'

import { PoolError } from '../errors.js'
import type { Priority } from '../types.js'
import type { Counters } from './counters.js'
import type { ResolvedRemoteOptions } from './options.js'
import { BULLMQ_PRIORITY, JOB_NAME, type JobData, decodeResult } from './wire.js'

/** One call waiting for its vectors. */
export interface Caller {
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
export interface JobEntry {
  id: string
  priority: Priority
  texts: string[]
  segments: Segment[]
  sent: boolean
  sentAt: number
}

/** One model's queue, its listener, its jobs. */
export interface Channel {
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

/** The jobs of every model of one client, open and sent. */
export class JobBook {
  readonly #settings: ResolvedRemoteOptions
  readonly #channels: Map<string, Channel>

  constructor(settings: ResolvedRemoteOptions, channels: Map<string, Channel>) {
    this.#settings = settings
    this.#channels = channels
  }

  /** Adds `texts` of `caller` to the open jobs of `channel` and `priority`, sending full ones. */
  enqueue(channel: Channel, priority: Priority, caller: Caller, texts: readonly string[]): void {
    const max = this.#settings.maxJobTexts
    let at = 0
    while (at < texts.length) {
      let open = channel.open.get(priority)
      if (open === undefined) {
        const job: JobEntry = { id: randomUUID(), priority, texts: [], segments: [], sent: false, sentAt: 0 }
        open = { job, timer: setTimeout(() => this.send(channel, priority), this.#settings.coalesceMs) }
        channel.open.set(priority, open)
      }
      const { job } = open
      const count = Math.min(max - job.texts.length, texts.length - at)
      job.segments.push({ caller, at, from: job.texts.length, count })
      for (let i = 0; i < count; i++) job.texts.push(texts[at + i])
      caller.jobs.add(job)
      at += count
      if (job.texts.length >= max) this.send(channel, priority)
    }
  }

  /** Sends the open job of `channel` and `priority`, unless every caller of it has gone. */
  send(channel: Channel, priority: Priority): void {
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
        this.finishJob(channel, job, new PoolError('REMOTE_UNAVAILABLE', `Redis did not take the job: ${message}`))
      })
  }

  /**
   * Settles `job` once: hands each live caller its slice of `result`, or `error`; then removes
   * the job from Redis (a no-op for a job Redis never took).
   */
  finishJob(channel: Channel, job: JobEntry, error: PoolError | undefined, result?: unknown): void {
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
  abandon(caller: Caller, error: PoolError): void {
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
}
