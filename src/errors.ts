/**
 * Every error inferpool raises is a {@link PoolError} with one of these codes.
 *
 * - `INVALID_INPUT`: an argument or option is malformed (not an array, not a string, unknown
 *   device, bad number).
 * - `MODEL_NOT_FOUND`: no model at the given path (or no ONNX file in the folder).
 * - `MODEL_INVALID`: the model's files exist but cannot be used (corrupt ONNX, unreadable
 *   tokenizer, inputs or outputs that do not fit an embedding model).
 * - `MODEL_FETCH_FAILED`: the default model could not be fetched or failed its integrity check.
 * - `ORT_LOAD_FAILED`: the ONNX Runtime library is missing, unloadable or too old.
 * - `DEVICE_UNAVAILABLE`: a device was asked for that cannot run the model (e.g. `cuda:0`
 *   without a working CUDA provider).
 * - `MODEL_UNAVAILABLE`: a model cannot be loaded where it was asked for now: it exceeds the
 *   worker's memory budget, only fits by evicting a model of higher priority, or the worker has
 *   made its `maxSwitchesPerHour`.
 * - `INFERENCE_FAILED`: ONNX Runtime failed on a batch.
 * - `POOL_CLOSED`: the pool was closed before the call, or while it waited (`close({ drain: false })`).
 * - `OVERLOADED`: accepting the call would exceed `maxQueuedItems`.
 * - `TIMEOUT`: the call did not finish within its `timeoutMs`; texts not started were not run.
 * - `ABORTED`: the call's `signal` aborted; texts not started were not run.
 * - `NATIVE_BINDING_MISSING`: no prebuilt native addon fits this platform, or its package was not
 *   installed (the message names the platform, the package looked for and the remedies).
 * - `REMOTE_UNAVAILABLE`: a `RemotePool` (`inferpool/bullmq`) cannot reach Redis, no worker
 *   serving the model has been seen, or a job was lost from the queue.
 * - `INTERNAL`: a bug inside inferpool (a caught panic, a lost task); please report it.
 */
export type PoolErrorCode =
  | 'INVALID_INPUT'
  | 'MODEL_NOT_FOUND'
  | 'MODEL_INVALID'
  | 'MODEL_FETCH_FAILED'
  | 'ORT_LOAD_FAILED'
  | 'DEVICE_UNAVAILABLE'
  | 'MODEL_UNAVAILABLE'
  | 'INFERENCE_FAILED'
  | 'POOL_CLOSED'
  | 'OVERLOADED'
  | 'TIMEOUT'
  | 'ABORTED'
  | 'NATIVE_BINDING_MISSING'
  | 'REMOTE_UNAVAILABLE'
  | 'INTERNAL'

const CODES: ReadonlySet<string> = new Set<PoolErrorCode>([
  'INVALID_INPUT',
  'MODEL_NOT_FOUND',
  'MODEL_INVALID',
  'MODEL_FETCH_FAILED',
  'ORT_LOAD_FAILED',
  'DEVICE_UNAVAILABLE',
  'MODEL_UNAVAILABLE',
  'INFERENCE_FAILED',
  'POOL_CLOSED',
  'OVERLOADED',
  'TIMEOUT',
  'ABORTED',
  'NATIVE_BINDING_MISSING',
  'REMOTE_UNAVAILABLE',
  'INTERNAL',
])

/** Whether `code` is one of the {@link PoolErrorCode}s. */
export function isPoolErrorCode(code: unknown): code is PoolErrorCode {
  return typeof code === 'string' && CODES.has(code)
}

/** Marks every {@link PoolError}, whichever copy of this module made it. */
const BRAND = Symbol.for('inferpool.PoolError')

/**
 * The one error type of inferpool; `code` says what went wrong. `instanceof PoolError` holds
 * for errors of every entry point (`inferpool`, `inferpool/bullmq`) and of both module formats,
 * each of which bundles its own copy of this class.
 */
export class PoolError extends Error {
  /** Machine-readable reason, see {@link PoolErrorCode}. */
  readonly code: PoolErrorCode

  constructor(code: PoolErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'PoolError'
    this.code = code
    Object.defineProperty(this, BRAND, { value: true })
  }

  static [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && BRAND in value
  }
}

/**
 * Turns an error from the native binding into a {@link PoolError}. The binding throws and
 * rejects with an `Error` whose `code` property is a {@link PoolErrorCode}, and an event carries
 * its error as `{ code, message }`; the message is kept as it is. Anything without a known code
 * becomes `INTERNAL`.
 */
export function fromNative(error: unknown): PoolError {
  if (error instanceof PoolError) return error
  const fields: { code?: unknown; message?: unknown } = typeof error === 'object' && error !== null ? error : {}
  const message = typeof fields.message === 'string' ? fields.message : String(error)
  const code = isPoolErrorCode(fields.code) ? fields.code : 'INTERNAL'
  return new PoolError(code, message, { cause: error })
}
