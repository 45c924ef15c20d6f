// Generation calls: options checked and turned into the binding's, one call handed to the
// native pool with its cancel wired to the caller's signal and timeout, and the stream of one
// prompt's deltas.

import type { BindingDelta, BindingGenerateOptions, BindingPool, BindingPriority } from './binding.cjs'
import { aborted, failure, progress, wire } from './call.js'
import { MAX_INT, checkKeys, describe, integer, positiveInt, shown } from './check.js'
import { PoolError } from './errors.js'
import { type ModelChoice, modelIndex } from './options.js'
import type { GenerateDelta, GenerateOptions, Generated, ModelKind, Progress } from './types.js'

/** Most stop sequences per call. */
const MAX_STOP = 16
/** Most tokens one prompt may ask for. */
const MAX_NEW_TOKENS = 1 << 20

const GENERATE_KEYS: Record<keyof GenerateOptions, true> = {
  model: true,
  maxNewTokens: true,
  minNewTokens: true,
  temperature: true,
  topK: true,
  topP: true,
  seed: true,
  stop: true,
  repetitionPenalty: true,
  priority: true,
  signal: true,
  timeoutMs: true,
  onProgress: true,
}

/** The models a generation call may use: names and kinds by index. */
export interface GenerationChoice extends ModelChoice {
  kinds: readonly ModelKind[]
}

/** One checked generation call. */
export interface GenerateCall {
  model: number
  prompts: string[]
  options: BindingGenerateOptions
  signal: AbortSignal | undefined
  timeoutMs: number | undefined
  onProgress: ((progress: Progress) => void) | undefined
}

function finite(name: string, value: unknown, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new PoolError('INVALID_INPUT', `${name} must be a number from ${min} to ${max}, got ${shown(value)}`)
  }
  return value
}

/** The seq2seq model a call names, or the one it gets without naming one. */
function generationModel(name: unknown, choice: GenerationChoice): number {
  const seq2seq = choice.kinds.flatMap((kind, index) => (kind === 'seq2seq' ? [index] : []))
  let index: number
  if (name !== undefined || choice.kinds[choice.defaultModel] === 'seq2seq') index = modelIndex(name, choice)
  else if (seq2seq.length === 1) index = seq2seq[0]
  else {
    throw new PoolError(
      'INVALID_INPUT',
      seq2seq.length === 0
        ? 'this pool has no seq2seq model: give one with models: { name: { path, kind: "seq2seq" } }'
        : `name the model: this pool has several seq2seq models (${seq2seq.map((i) => JSON.stringify(choice.names[i])).join(', ')})`,
    )
  }
  if (choice.kinds[index] !== 'seq2seq') {
    throw new PoolError(
      'INVALID_INPUT',
      `model ${JSON.stringify(choice.names[index])} is an embedding model: it cannot generate text`,
    )
  }
  return index
}

/**
 * Checks the prompts and options of `generate` / `generateStream`.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the first thing out of place.
 */
export function checkGenerate(prompts: unknown, options: unknown, choice: GenerationChoice): GenerateCall {
  if (!Array.isArray(prompts)) {
    throw new PoolError('INVALID_INPUT', `prompts must be an array of strings, got ${describe(prompts)}`)
  }
  prompts.forEach((prompt, i) => {
    if (typeof prompt !== 'string') {
      throw new PoolError('INVALID_INPUT', `prompts[${i}] must be a string, got ${describe(prompt)}`)
    }
  })
  if (options === null || typeof options !== 'object') throw new PoolError('INVALID_INPUT', 'options must be an object')
  checkKeys(options, GENERATE_KEYS)
  const given = options as GenerateOptions
  const { priority = 'bulk', signal, onProgress } = given
  if (priority !== 'interactive' && priority !== 'bulk') {
    throw new PoolError('INVALID_INPUT', `priority must be "interactive" or "bulk", got ${shown(priority)}`)
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new PoolError('INVALID_INPUT', 'signal must be an AbortSignal')
  }
  if (onProgress !== undefined && typeof onProgress !== 'function') {
    throw new PoolError('INVALID_INPUT', 'onProgress must be a function')
  }
  const stop = given.stop === undefined ? [] : typeof given.stop === 'string' ? [given.stop] : given.stop
  if (!Array.isArray(stop) || stop.length > MAX_STOP || stop.some((s) => typeof s !== 'string' || s.length === 0)) {
    throw new PoolError(
      'INVALID_INPUT',
      `stop must be a non-empty string or up to ${MAX_STOP} of them, got ${shown(given.stop)}`,
    )
  }
  const maxNewTokens = integer('maxNewTokens', given.maxNewTokens, 1, MAX_NEW_TOKENS, undefined)
  const minNewTokens = integer('minNewTokens', given.minNewTokens, 0, MAX_NEW_TOKENS, 0)
  if (maxNewTokens !== undefined && minNewTokens > maxNewTokens) {
    throw new PoolError('INVALID_INPUT', `minNewTokens (${minNewTokens}) exceeds maxNewTokens (${maxNewTokens})`)
  }
  const timeoutMs = given.timeoutMs === undefined ? undefined : positiveInt('timeoutMs', given.timeoutMs, 0)
  return {
    model: generationModel(given.model, choice),
    prompts: prompts as string[],
    options: {
      // The binding's string enum has exactly these values.
      priority: priority as BindingPriority,
      timeoutMs,
      maxNewTokens,
      minNewTokens,
      temperature: finite('temperature', given.temperature, 0, 100, 0),
      topK: integer('topK', given.topK, 0, MAX_INT, 0),
      topP: finite('topP', given.topP, Number.MIN_VALUE, 1, 1),
      repetitionPenalty: finite('repetitionPenalty', given.repetitionPenalty, Number.MIN_VALUE, 100, 1),
      seed: integer('seed', given.seed, 0, Number.MAX_SAFE_INTEGER, undefined),
      stop: stop as string[],
    },
    signal,
    timeoutMs,
    onProgress,
  }
}

/**
 * Runs `call` on the native pool and resolves with one result per prompt, in order; its
 * promise is in `pending` until it settles.
 */
export async function generate(
  pool: BindingPool,
  call: GenerateCall,
  pending: Set<Promise<unknown>>,
): Promise<Generated[]> {
  const { signal, timeoutMs, onProgress, prompts } = call
  if (signal?.aborted) throw aborted(signal)
  if (prompts.length === 0) return []
  const { report, rethrow } = progress(prompts.length, onProgress)
  const native = pool.generate(
    call.model,
    prompts,
    { ...call.options, progressEvery: onProgress === undefined ? undefined : 1 },
    onProgress === undefined ? undefined : report,
  )
  const result = native.result()
  pending.add(result)
  const unwire = wire(native, signal, timeoutMs)
  try {
    const done = await result.catch((error: unknown) => {
      throw failure(error, signal, timeoutMs)
    })
    report(prompts.length)
    rethrow()
    return done.map((g) => ({
      text: g.text,
      tokens: g.tokens,
      finishReason: g.finishReason,
      promptTokens: g.promptTokens,
    }))
  } finally {
    pending.delete(result)
    unwire()
  }
}

/**
 * Generates for one prompt and yields its deltas, then a last one with the finish reason.
 * Leaving the loop early cancels the prompt: it leaves the decoder at the next step.
 */
export async function* generateStream(
  pool: BindingPool,
  call: GenerateCall,
  pending: Set<Promise<unknown>>,
): AsyncGenerator<GenerateDelta, void, undefined> {
  const { signal, timeoutMs } = call
  if (signal?.aborted) throw aborted(signal)
  const queue: BindingDelta[] = []
  let wake: (() => void) | undefined
  const onDelta = (delta: BindingDelta) => {
    queue.push(delta)
    wake?.()
  }
  const native = pool.generate(call.model, call.prompts, call.options, undefined, onDelta)
  let error: PoolError | undefined
  const result = native.result().then(
    () => {},
    (e: unknown) => {
      error = failure(e, signal, timeoutMs)
      wake?.()
    },
  )
  pending.add(result)
  const unwire = wire(native, signal, timeoutMs)
  let finished = false
  try {
    for (;;) {
      const delta = queue.shift()
      if (delta !== undefined) {
        const finishReason = delta.finishReason ?? null
        yield { text: delta.text, token: delta.token ?? null, finishReason, promptTokens: delta.promptTokens ?? null }
        if (finishReason !== null) {
          finished = true
          return
        }
        continue
      }
      if (error !== undefined) throw error
      await new Promise<void>((resolve) => {
        wake = resolve
      })
      wake = undefined
    }
  } finally {
    if (!finished) native.cancel(false)
    unwire()
    // The call settles (answered or cancelled) before the pool may close under it.
    await result
    pending.delete(result)
  }
}
