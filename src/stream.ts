// `Pool.embedStream`: texts read from any (async) iterable in parts of `chunkSize`, each part one
// call of the pool, at most `highWaterMark` texts read ahead of the consumer, results yielded in
// source order. Leaving early cancels the parts in flight and closes the source.

import { aborted } from './call.js'
import { describe } from './check.js'
import { PoolError } from './errors.js'
import { type ModelChoice, checkStreamOptions } from './options.js'
import type { EmbedOptions, StreamItem, StreamOptions } from './types.js'

/** What a stream needs of its pool. */
export interface StreamTarget {
  /** The pool's models, to check the stream's `model` option. */
  models: ModelChoice
  /** One call of the pool: `Pool.embed` without the options it checks itself. */
  embed: (texts: string[], options: EmbedOptions) => Promise<Float32Array[]>
}

/**
 * Embeds the texts of `source` through `target` and yields `{ index, embedding }` in source
 * order (see `Pool.embedStream`). Its options are checked when the consumer first asks for a
 * result.
 *
 * @throws {PoolError} `INVALID_INPUT` for malformed options, a source that is not iterable or
 * yields something other than a string; `ABORTED` when `signal` aborts; and every code of
 * `target.embed`.
 */
export async function* embedStream(
  source: Iterable<string> | AsyncIterable<string>,
  options: StreamOptions,
  target: StreamTarget,
): AsyncGenerator<StreamItem, void, undefined> {
  const { highWaterMark, chunkSize, model, priority, signal: outer } = checkStreamOptions(options, target.models)
  const iterator = openIterator(source)
  // Each part in flight has its own signal, released when it settles, so a signal never
  // holds more than the listeners of one call however long the stream. The caller's signal
  // gets one listener, which cancels every part in flight.
  const cancels = new Set<AbortController>()
  const cancelAll = (reason: unknown) => {
    for (const cancel of cancels) cancel.abort(reason)
  }
  const forward = () => cancelAll(outer?.reason)
  outer?.addEventListener('abort', forward, { once: true })
  // Parts in flight, in source order; each settles to its vectors (or its error, thrown when
  // the consumer reaches it).
  const parts: { start: number; vectors: Promise<Float32Array[]>; settled: boolean }[] = []
  let read = 0
  let taken = 0
  let exhausted = false
  try {
    while (true) {
      if (outer?.aborted) throw aborted(outer)
      // Read one more part when the window has room.
      if (!exhausted && read - taken < highWaterMark) {
        const texts: string[] = []
        while (texts.length < chunkSize && read + texts.length - taken < highWaterMark) {
          const next = await iterator.next()
          if (next.done) {
            exhausted = true
            break
          }
          if (typeof next.value !== 'string') {
            throw new PoolError(
              'INVALID_INPUT',
              `the source yielded ${describe(next.value)} at index ${read + texts.length}; expected a string`,
            )
          }
          texts.push(next.value)
        }
        if (texts.length > 0) {
          const cancel = new AbortController()
          cancels.add(cancel)
          const part = {
            start: read,
            vectors: target.embed(texts, { model, priority, signal: cancel.signal }),
            settled: false,
          }
          const release = () => {
            part.settled = true
            cancels.delete(cancel)
          }
          part.vectors.then(release, release)
          parts.push(part)
          read += texts.length
        }
        // Keep reading while nothing is ready to hand over.
        if (!exhausted && read - taken < highWaterMark && !parts[0]?.settled) continue
      }
      const head = parts.shift()
      if (!head) return
      const vectors = await head.vectors
      for (let i = 0; i < vectors.length; i++) {
        yield { index: head.start + i, embedding: vectors[i] }
        taken++
      }
    }
  } finally {
    outer?.removeEventListener('abort', forward)
    if (parts.length > 0) {
      cancelAll(new Error('the stream was closed'))
      for (const part of parts) part.vectors.catch(() => undefined)
    }
    await iterator.return?.()
  }
}

/**
 * The iterator of `source`, async if it has one.
 *
 * @throws {PoolError} `INVALID_INPUT` when `source` is neither iterable nor async iterable.
 */
function openIterator(source: Iterable<string> | AsyncIterable<string>): AsyncIterator<string> | Iterator<string> {
  if (source !== null && typeof source === 'object') {
    const asyncIterable = (source as AsyncIterable<string>)[Symbol.asyncIterator]
    if (typeof asyncIterable === 'function') return asyncIterable.call(source)
  }
  const iterable = (source as Iterable<string> | null)?.[Symbol.iterator]
  if (typeof iterable === 'function') return iterable.call(source)
  throw new PoolError('INVALID_INPUT', `the source must be iterable or async iterable, got ${describe(source)}`)
}
