// What `RemotePool` and `serveQueue` agree on: the queue of each model, a job's data and result,
// BullMQ priorities, failures carried as `CODE: message`, and what a worker does with a failed
// job. Pure: no connection, so every rule is unit-tested on its own.

import { endianness } from 'node:os'

import { PoolError, type PoolErrorCode, isPoolErrorCode } from '../errors.js'
import type { Priority } from '../types.js'

/** The BullMQ key prefix of inferpool's queues, unless `prefix` says otherwise. */
export const DEFAULT_PREFIX = 'inferpool'

/** The name of every job (BullMQ jobs carry a name; one queue holds one kind of job). */
export const JOB_NAME = 'embed'

/**
 * The queue of model `model`: one queue per model, so that a worker consumes only the models it
 * serves. The name is URI-encoded, since BullMQ keys use `:` as a separator.
 */
export function queueName(model: string): string {
  return `embed.${encodeURIComponent(model)}`
}

/** BullMQ priorities (1 is served first); every job has one, so none skips the priority order. */
export const BULLMQ_PRIORITY: Record<Priority, number> = { interactive: 1, bulk: 2 }

/** A job's data: the texts of the calls coalesced into it, and their priority. */
export interface JobData {
  texts: string[]
  priority: Priority
}

/** A job's result: one row of `dimension` little-endian float32 per text, base64. */
export interface JobResult {
  dimension: number
  vectors: string
}

const BIG_ENDIAN = endianness() === 'BE'

/** Encodes `vectors` (one per text, all of one width) as a {@link JobResult}. */
export function encodeResult(vectors: readonly Float32Array[]): JobResult {
  const dimension = vectors[0]?.length ?? 0
  const flat = new Float32Array(vectors.length * dimension)
  vectors.forEach((vector, i) => flat.set(vector, i * dimension))
  const bytes = Buffer.from(flat.buffer, flat.byteOffset, flat.byteLength)
  if (BIG_ENDIAN) bytes.swap32()
  return { dimension, vectors: bytes.toString('base64') }
}

/**
 * The `count` vectors of a {@link JobResult}, views into one fresh buffer.
 *
 * @throws {PoolError} `INTERNAL` when the result is not one row of float32 per text.
 */
export function decodeResult(result: unknown, count: number): Float32Array[] {
  const { dimension, vectors } = (result ?? {}) as Partial<JobResult>
  const bytes = typeof vectors === 'string' && Number.isInteger(dimension) ? Buffer.from(vectors, 'base64') : undefined
  if (bytes === undefined || bytes.length !== count * (dimension as number) * 4) {
    throw new PoolError('INTERNAL', `a worker returned a malformed result for ${count} texts`)
  }
  const flat = new Float32Array(bytes.length / 4)
  const view = new Uint8Array(flat.buffer)
  view.set(bytes)
  if (BIG_ENDIAN) Buffer.from(flat.buffer).swap32()
  const d = dimension as number
  return Array.from({ length: count }, (_, i) => flat.subarray(i * d, (i + 1) * d))
}

/** A job's failure reason: the code first, so that the client raises the same error. */
export function failureReason(error: PoolError): string {
  return `${error.code}: ${error.message}`
}

/**
 * The error of a job that failed with `reason`: the worker's code and message when the reason
 * carries them; `INFERENCE_FAILED` otherwise (BullMQ's own failures, such as a job that stalled
 * more often than `maxStalledCount`: its workers died while running it).
 */
export function failureError(reason: string): PoolError {
  const match = /^([A-Z_]+): ([\s\S]*)$/.exec(reason)
  if (match !== null && isPoolErrorCode(match[1])) return new PoolError(match[1], match[2])
  return new PoolError('INFERENCE_FAILED', `the job failed on a worker: ${reason}`)
}

/** What a worker does with a job whose local call failed. */
export type Disposition =
  /** Fail this attempt: BullMQ retries it with back-off while attempts remain. */
  | 'retry'
  /** Put it back on the queue, rate-limiting the queue for a moment; no attempt is spent. */
  | 'rate-limit'
  /** Fail it for good: another attempt would fail the same way. */
  | 'fail'

/**
 * The policy of a worker for a failed call: `INFERENCE_FAILED` and `POOL_CLOSED` (this worker's
 * pool went away) are retried, by this or another worker; `OVERLOADED` is put back, up to
 * `maxOverloadedStarts` starts of the job; anything else (bad input, a model that cannot load)
 * fails the job.
 */
export function disposition(code: PoolErrorCode, starts: number, maxOverloadedStarts: number): Disposition {
  if (code === 'INFERENCE_FAILED' || code === 'POOL_CLOSED') return 'retry'
  if (code === 'OVERLOADED') return starts < maxOverloadedStarts ? 'rate-limit' : 'fail'
  return 'fail'
}

/**
 * The texts and priority of a job's data.
 *
 * @throws {PoolError} `INVALID_INPUT` when the data is not `{ texts: string[], priority }`.
 */
export function checkJobData(data: unknown): JobData {
  const { texts, priority } = (data ?? {}) as Partial<JobData>
  if (!Array.isArray(texts) || !texts.every((text) => typeof text === 'string')) {
    throw new PoolError('INVALID_INPUT', 'the job data has no array of strings in "texts"')
  }
  if (priority !== 'interactive' && priority !== 'bulk') {
    throw new PoolError('INVALID_INPUT', 'the job data has no priority "interactive" or "bulk"')
  }
  return { texts, priority }
}

/**
 * Waits for `closing` for at most `ms`: closing a connection that never opened may wait for a
 * reconnection attempt.
 */
export async function settleWithin(closing: Promise<unknown>[], ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  await Promise.race([Promise.allSettled(closing), new Promise((resolve) => (timer = setTimeout(resolve, ms)))])
  clearTimeout(timer)
}

/**
 * `promise`, or a `REMOTE_UNAVAILABLE` rejection after `ms`.
 *
 * @throws {PoolError} `REMOTE_UNAVAILABLE` with `message` when `ms` passes first.
 */
export async function withDeadline<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new PoolError('REMOTE_UNAVAILABLE', `${message} within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, deadline])
  } finally {
    clearTimeout(timer)
  }
}
