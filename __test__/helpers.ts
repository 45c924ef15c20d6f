import { join } from 'node:path'

import { PoolError } from '../src/index.js'

/** The generated tiny model (written by global-setup.ts). */
export const TINY_BERT = join(import.meta.dirname, '.fixtures', 'tiny-bert')
/** A second generated model, larger and wider (written by global-setup.ts). */
export const TINY_BERT_WIDE = join(import.meta.dirname, '.fixtures', 'tiny-bert-wide')

/** Resolves once `check()` holds (polled every 2 ms); rejects after `timeoutMs`. */
export async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
}

/** The `code` of the `PoolError` that `promise` rejects with, `'resolved'`, or what else it threw. */
export async function code(promise: Promise<unknown>): Promise<string> {
  return promise.then(
    () => 'resolved',
    (e: unknown) => (e instanceof PoolError ? e.code : `not a PoolError: ${String(e)}`),
  )
}
