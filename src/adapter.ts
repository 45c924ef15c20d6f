// What the framework adapters share: their options checked, and the pool's vectors as the
// plain arrays the frameworks take. Imported by the adapters only, never by the main entry;
// it imports nothing at run time, so an adapter bundle carries no second copy of the pool.

import type { Pool } from './pool.js'
import type { EmbedOptions } from './types.js'

/** Options of the framework adapters. */
export interface AdapterOptions {
  /** The pool that embeds (it stays the caller's: the adapter never closes it). */
  pool: Pool
  /** Name of the pool model to use. Default: the pool's default model. */
  model?: string
  /**
   * Each call fails with `TIMEOUT` when not finished within this many milliseconds. Default:
   * none.
   */
  timeoutMs?: number
}

/** The pool and the per-call options of an adapter, checked. */
export function adapterOptions(
  options: AdapterOptions,
  known: readonly string[],
): { pool: Pool; call: Pick<EmbedOptions, 'model' | 'timeoutMs'> } {
  if (options === null || typeof options !== 'object') throw new TypeError('options must be an object with a pool')
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new TypeError(`unknown option ${JSON.stringify(key)}: expected ${known.join(', ')}`)
  }
  const { pool, model, timeoutMs } = options
  if (pool === null || typeof pool !== 'object' || typeof pool.embed !== 'function') {
    throw new TypeError('options.pool must be an inferpool Pool')
  }
  if (model !== undefined && !pool.models.includes(model)) {
    throw new TypeError(`unknown model ${JSON.stringify(model)}; the pool has ${pool.models.join(', ')}`)
  }
  return {
    pool,
    call: { ...(model === undefined ? {} : { model }), ...(timeoutMs === undefined ? {} : { timeoutMs }) },
  }
}

/** `rows` as plain number arrays. */
export function arrays(rows: Float32Array[]): number[][] {
  return rows.map((row) => Array.from(row))
}
