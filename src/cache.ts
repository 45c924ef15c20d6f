// The result cache (opt-in, `Pool.create({ cache: { maxEntries } })`): each text's vector and
// token count, by model and text, in a least-recently-used map. A call runs only the texts
// that are neither cached nor being run by another call; texts another call is running are
// shared with it, so identical texts in flight at the same time run once.
//
// Invariants:
// 1. An entry is written only from a successful run, so a cached vector is exactly what the
//    model gave for that text (a copy: callers may change their own rows).
// 2. A call waiting for another call's texts stays bounded by its own `signal` and
//    `timeoutMs`. When that other call fails for a reason of its own (it was aborted, timed
//    out, or refused as too large), the waiting call runs the texts itself; any other failure
//    (the model failed on the text, the pool closed) is the waiting call's failure too.
// 3. An interactive call never waits for texts a bulk call is running: it runs them itself.

import { type Embedded, aborted, rows, timedOut } from './call.js'
import { PoolError } from './errors.js'
import type { Call } from './options.js'
import type { CacheStatus, Priority, Progress } from './types.js'

/** One text's result. */
interface Entry {
  row: Float32Array
  tokens: number
}

/** Texts a call is running, shared with calls that ask for the same texts meanwhile. */
interface Running {
  priority: Priority
  result: Promise<Entry>
}

/** Failures that belong to the call that ran a text, not to the calls that waited for it. */
const OWN_FAILURES: ReadonlySet<string> = new Set(['ABORTED', 'TIMEOUT', 'OVERLOADED'])

/** Runs one call's texts in the pool (counting tokens). */
export type Run = (call: Call) => Promise<Embedded>

export class ResultCache {
  readonly #maxEntries: number
  /** Key → entry, least recently used first (a `Map` keeps insertion order). */
  readonly #entries = new Map<string, Entry>()
  /** Key → the run of a call that is embedding that text now. */
  readonly #running = new Map<string, Running>()
  #hits = 0
  #misses = 0

  constructor(maxEntries: number) {
    this.#maxEntries = maxEntries
  }

  /** Hits, misses and size, for `status()` and `metrics()`. */
  counts(): CacheStatus {
    return { hits: this.#hits, misses: this.#misses, entries: this.#entries.size, maxEntries: this.#maxEntries }
  }

  /**
   * Answers `call` from the cache where it can and runs the rest with `run`, once per distinct
   * text; resolves with every text's row and token count, in input order.
   *
   * @throws {PoolError} `ABORTED`, `TIMEOUT`, and every code `run` throws; or what
   * `onProgress` threw.
   */
  async embed(call: Call, run: Run): Promise<Embedded & { tokenCounts: Uint32Array }> {
    const { texts, signal, timeoutMs, onProgress } = call
    const results = Array.from<Entry | undefined>({ length: texts.length })
    const deadline = timeoutMs === undefined ? undefined : performance.now() + timeoutMs
    const progress = new ProgressReport(texts.length, onProgress)
    let todo = Array.from(texts.keys())
    while (todo.length > 0) {
      if (signal?.aborted) throw aborted(signal)
      const left = deadline === undefined ? undefined : Math.ceil(deadline - performance.now())
      if (left !== undefined && left <= 0) throw timedOut(timeoutMs!)
      const { own, shared, cached } = this.#plan(call, todo, results)
      progress.answered = texts.length - todo.length + cached
      const waits = shared.map(async ({ index, running }) => {
        results[index] = await bounded(running.result, signal, left, timeoutMs)
        this.#hits++
      })
      const owned = this.#runOwn(call, own, left, run, progress).then((entries) => {
        for (const [key, indices] of own) {
          for (const index of indices) results[index] = entries.get(key)
          this.#hits += indices.length - 1
        }
      })
      const settled = await Promise.allSettled([owned, ...waits])
      todo = []
      settled.forEach((outcome, part) => {
        if (outcome.status === 'fulfilled') return
        const error = outcome.reason
        // A text another call was running, which failed for a reason of its own: run it here.
        if (part > 0 && error instanceof PoolError && OWN_FAILURES.has(error.code) && !isOwn(error, call, deadline)) {
          todo.push(shared[part - 1].index)
          return
        }
        throw error
      })
    }
    return progress.finish(assemble(results as Entry[]))
  }

  /**
   * Sorts the texts at `indices`: cached ones are written to `results` at once, texts another
   * call is running are `shared`, the rest are `own` (by key, each with every index it has in
   * the call).
   */
  #plan(
    call: Call,
    indices: number[],
    results: (Entry | undefined)[],
  ): { own: Map<string, number[]>; shared: { index: number; running: Running }[]; cached: number } {
    const own = new Map<string, number[]>()
    const shared: { index: number; running: Running }[] = []
    let cached = 0
    for (const index of indices) {
      const key = cacheKey(call.model, call.texts[index])
      const entry = this.#entries.get(key)
      if (entry !== undefined) {
        // Most recently used goes last.
        this.#entries.delete(key)
        this.#entries.set(key, entry)
        results[index] = entry
        cached++
        continue
      }
      const mine = own.get(key)
      if (mine !== undefined) {
        mine.push(index)
        continue
      }
      const running = this.#running.get(key)
      if (running !== undefined && (running.priority === 'interactive' || call.priority === 'bulk')) {
        shared.push({ index, running })
        continue
      }
      own.set(key, [index])
    }
    this.#hits += cached
    return { own, shared, cached }
  }

  /**
   * Runs the distinct texts of `own` as one call, shared with other calls while it runs, and
   * caches what it gives; resolves with each key's entry.
   */
  async #runOwn(
    call: Call,
    own: Map<string, number[]>,
    timeoutMs: number | undefined,
    run: Run,
    progress: ProgressReport,
  ): Promise<Map<string, Entry>> {
    const keys = [...own.keys()]
    if (keys.length === 0) return new Map()
    this.#misses += keys.length
    const settle: { resolve: (entry: Entry) => void; reject: (error: unknown) => void }[] = []
    for (const key of keys) {
      const result = new Promise<Entry>((resolve, reject) => settle.push({ resolve, reject }))
      // Nobody may be waiting for it; its failure is reported to this call.
      result.catch(() => {})
      this.#running.set(key, { priority: call.priority, result })
    }
    const texts = keys.map((key) => call.texts[own.get(key)![0]])
    try {
      const { embeddings, tokenCounts } = await run({
        ...call,
        texts,
        timeoutMs,
        onProgress: call.onProgress && ((p: Progress) => progress.report(p.done)),
      })
      const entries = new Map<string, Entry>()
      keys.forEach((key, i) => {
        const entry = { row: embeddings[i].slice(), tokens: tokenCounts![i] }
        entries.set(key, entry)
        this.#store(key, entry)
        settle[i].resolve(entry)
      })
      return entries
    } catch (error) {
      for (const { reject } of settle) reject(error)
      throw error
    } finally {
      for (const key of keys) this.#running.delete(key)
    }
  }

  /** Caches `entry` under `key`, evicting the least recently used entry beyond the bound. */
  #store(key: string, entry: Entry): void {
    this.#entries.delete(key)
    this.#entries.set(key, entry)
    if (this.#entries.size > this.#maxEntries) {
      this.#entries.delete(this.#entries.keys().next().value!)
    }
  }
}

/** The cache key of `text` for model `model`. */
function cacheKey(model: number, text: string): string {
  return `${model}\u0000${text}`
}

/**
 * Whether `error` answers `call`'s own signal or deadline, rather than the call it waited for.
 */
function isOwn(error: PoolError, call: Call, deadline: number | undefined): boolean {
  if (error.code === 'ABORTED') return call.signal?.aborted === true
  return error.code === 'TIMEOUT' && deadline !== undefined && performance.now() >= deadline
}

/**
 * `result`, or `ABORTED` when `signal` aborts first, or `TIMEOUT` after `left` milliseconds
 * (`timeoutMs` being the call's whole budget, for the message).
 */
function bounded<T>(
  result: Promise<T>,
  signal: AbortSignal | undefined,
  left: number | undefined,
  timeoutMs: number | undefined,
): Promise<T> {
  if (signal === undefined && left === undefined) return result
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => done(() => reject(aborted(signal!)))
    const timer = left === undefined ? undefined : setTimeout(() => done(() => reject(timedOut(timeoutMs!))), left)
    const done = (settle: () => void) => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      settle()
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    result.then(
      (value) => done(() => resolve(value)),
      (error: unknown) => done(() => reject(error)),
    )
  })
}

/** Every text's row (views into one buffer) and token count, in input order. */
function assemble(results: Entry[]): Embedded & { tokenCounts: Uint32Array } {
  if (results.length === 0) return { embeddings: [], tokenCounts: new Uint32Array(0) }
  const d = results[0].row.length
  const flat = new Float32Array(results.length * d)
  const tokenCounts = new Uint32Array(results.length)
  results.forEach((entry, i) => {
    flat.set(entry.row, i * d)
    tokenCounts[i] = entry.tokens
  })
  return { embeddings: rows(flat, results.length), tokenCounts }
}

/**
 * `onProgress` of a call served partly from the cache: counts the texts answered without
 * running them, reports once with `done === total` at the end, and keeps a throw from
 * `onProgress` for the end (so the texts this call runs for others still complete).
 */
class ProgressReport {
  /** Texts answered so far without running them in this call's own run. */
  answered = 0
  readonly #total: number
  readonly #onProgress: ((progress: Progress) => void) | undefined
  readonly #started = performance.now()
  #reported = 0
  #error: { thrown: unknown } | undefined

  constructor(total: number, onProgress: ((progress: Progress) => void) | undefined) {
    this.#total = total
    this.#onProgress = onProgress
  }

  /** `done` texts of the call's own run are done. */
  report(done: number): void {
    this.#emit(Math.min(this.#total, this.answered + done))
  }

  /** Reports the end and returns `result`, or throws what `onProgress` threw. */
  finish<T>(result: T): T {
    this.#emit(this.#total)
    if (this.#error !== undefined) throw this.#error.thrown
    return result
  }

  #emit(done: number): void {
    if (this.#onProgress === undefined || this.#error !== undefined || done <= this.#reported) return
    this.#reported = done
    const seconds = (performance.now() - this.#started) / 1000
    try {
      this.#onProgress({ done, total: this.#total, itemsPerSecond: seconds > 0 ? done / seconds : 0 })
    } catch (error) {
      this.#error = { thrown: error }
    }
  }
}
