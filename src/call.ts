// The call path: one checked call handed to the native pool, its cancel wired to the caller's
// signal and timeout, its progress reported, and its rows returned as one view per text.

import type { BindingPool, BindingPriority } from './binding.cjs'
import { PoolError, fromNative } from './errors.js'
import type { Call } from './options.js'
import type { Progress } from './types.js'

/** Texts between two `onProgress` reports of one call. */
const PROGRESS_PART = 256

/** What one call gives back. */
export interface Embedded {
  /** One vector per text, in input order: views into one buffer. */
  embeddings: Float32Array[]
  /** Each text's token count, when the call counted them. */
  tokenCounts: Uint32Array | undefined
}

/**
 * Hands `call` to the native pool and waits for its rows (and, with `countTokens`, each text's
 * token count, counted by the tokenization the call needs anyway); the call's promise is in
 * `pending` until it settles (a draining close waits for it).
 *
 * @throws {PoolError} `ABORTED` (the signal was or becomes aborted), `TIMEOUT`, and every code
 * of a native call; or what `onProgress` threw.
 */
export async function submit(
  pool: BindingPool,
  { model, texts, priority, signal, timeoutMs, onProgress }: Call,
  pending: Set<Promise<unknown>>,
  countTokens = false,
): Promise<Embedded> {
  if (signal?.aborted) throw aborted(signal)
  if (texts.length === 0) return { embeddings: [], tokenCounts: countTokens ? new Uint32Array(0) : undefined }
  // Progress comes from the native call as its texts complete: the call stays one call,
  // admitted (or refused) as a whole.
  const { report, rethrow } = progress(texts.length, onProgress)
  // The native call object is this call's own handle: a cancel reaches it (and only it) at
  // any time, while its texts are still being tokenized too. With `whenFull: 'wait'`, a call
  // beyond the limit waits natively, in call order, and its signal and timeout still apply
  // there.
  const native = pool.embed(
    model,
    texts as string[],
    {
      // The binding's string enum has exactly these values.
      priority: priority as BindingPriority,
      timeoutMs,
      progressEvery: onProgress === undefined ? undefined : PROGRESS_PART,
      countTokens,
    },
    onProgress === undefined ? undefined : report,
  )
  const result = native.result()
  pending.add(result)
  const unwire = wire(native, signal, timeoutMs)
  let flat: Float32Array
  try {
    flat = await result
  } catch (error) {
    throw failure(error, signal, timeoutMs)
  } finally {
    pending.delete(result)
    unwire()
  }
  report(texts.length)
  rethrow()
  return { embeddings: rows(flat, texts.length), tokenCounts: native.tokenCounts() ?? undefined }
}

/** Cancels a native call (`TIMEOUT` when `timedOut`) when `signal` aborts or `timeoutMs` passes; returns the undoing. */
export function wire(
  native: { cancel(timedOut: boolean): boolean },
  signal: AbortSignal | undefined,
  timeoutMs: number | undefined,
): () => void {
  const onAbort = () => native.cancel(false)
  signal?.addEventListener('abort', onAbort, { once: true })
  const timer = timeoutMs === undefined ? undefined : setTimeout(() => native.cancel(true), timeoutMs)
  return () => {
    clearTimeout(timer)
    signal?.removeEventListener('abort', onAbort)
  }
}

/** The error a native failure becomes, with the caller's own abort reason or timeout. */
export function failure(error: unknown, signal: AbortSignal | undefined, timeoutMs: number | undefined): PoolError {
  const failed = fromNative(error)
  if (failed.code === 'ABORTED' && signal?.aborted) return aborted(signal, failed)
  if (failed.code === 'TIMEOUT' && timeoutMs !== undefined) return timedOut(timeoutMs, failed)
  return failed
}

/**
 * A call's progress reports: `report(done)` tells `onProgress` (once per new count) and keeps
 * what it throws, which `rethrow()` throws once the call has settled.
 */
export function progress(
  total: number,
  onProgress: ((progress: Progress) => void) | undefined,
): { report: (done: number) => void; rethrow: () => void } {
  const started = performance.now()
  let reported = 0
  let failure: { error: unknown } | undefined
  return {
    report(done) {
      if (done <= reported || failure !== undefined || onProgress === undefined) return
      reported = done
      const seconds = (performance.now() - started) / 1000
      try {
        onProgress({ done, total, itemsPerSecond: seconds > 0 ? done / seconds : 0 })
      } catch (error) {
        failure = { error }
      }
    },
    rethrow() {
      if (failure !== undefined) throw failure.error
    },
  }
}

/** `flat` cut into `count` equal rows (views). */
export function rows(flat: Float32Array, count: number): Float32Array[] {
  const d = flat.length / count
  return Array.from({ length: count }, (_, i) => flat.subarray(i * d, (i + 1) * d))
}

/** The `TIMEOUT` error of a call that did not finish within `timeoutMs`. */
export function timedOut(timeoutMs: number, cause?: unknown): PoolError {
  return new PoolError(
    'TIMEOUT',
    `the call did not finish within ${timeoutMs} ms`,
    cause === undefined ? {} : { cause },
  )
}

/** The `ABORTED` error of a call whose `signal` aborted, with the signal's reason. */
export function aborted(signal: AbortSignal, cause?: unknown): PoolError {
  const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'aborted')
  return new PoolError('ABORTED', `the call was aborted: ${reason}`, { cause: cause ?? signal.reason })
}
