// The embedding server's HTTP API without the HTTP: its options checked, OpenAI's and TEI's
// request bodies (as JSON schemas for fastify, and the limits they cannot express), vectors
// shaped for the answer (truncated, renormalised, base64), and errors turned into each API's
// status and body. Pure, so every rule is tested without a server.

import { endianness } from 'node:os'

import { MAX_INT, checkKeys, integer, positiveInt, shown } from './check.js'
import { PoolError, type PoolErrorCode } from './errors.js'
import type { Priority } from './types.js'

/** Options of `createServer` and `inferpool serve`. */
export interface ServerOptions {
  /**
   * When set, every route but `/health` needs `Authorization: Bearer <apiKey>`; others get 401.
   * Default: none (the server listens on the loopback interface unless told otherwise).
   */
  apiKey?: string
  /** Largest request body, in bytes (413 beyond). Default 16 MiB. */
  maxBodyBytes?: number
  /** Most texts in one request (413 beyond). Default 2048, as OpenAI's API. */
  maxItems?: number
  /** Longest text, in characters (413 beyond); longer token sequences are truncated anyway. Default 100,000. */
  maxTextLength?: number
  /** A request not answered within this many milliseconds fails with 504; its texts not started are not run. Default 60,000. */
  timeoutMs?: number
  /**
   * Queue class of the requests' texts: `'auto'` (default) sends requests of one text (queries)
   * as `interactive` and larger ones as `bulk`.
   */
  priority?: 'auto' | Priority
  /** Log every request (fastify's logger, JSON lines on standard output). Default `false`. */
  logger?: boolean
}

/** {@link ServerOptions} checked, with their defaults. */
export type ServerSettings = Required<Omit<ServerOptions, 'apiKey'>> & { apiKey: string | undefined }

const SERVER_KEYS: Record<keyof ServerOptions, true> = {
  apiKey: true,
  maxBodyBytes: true,
  maxItems: true,
  maxTextLength: true,
  timeoutMs: true,
  priority: true,
  logger: true,
}

/**
 * Checks the options of `createServer` and fills in their defaults.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the first option that is unknown or out of range.
 */
export function serverSettings(options: unknown): ServerSettings {
  checkKeys(options, SERVER_KEYS)
  const given = options as ServerOptions
  const { apiKey, priority = 'auto', logger = false } = given
  if (apiKey !== undefined && (typeof apiKey !== 'string' || apiKey.length === 0)) {
    throw new PoolError('INVALID_INPUT', `apiKey must be a non-empty string, got ${shown(apiKey)}`)
  }
  if (priority !== 'auto' && priority !== 'interactive' && priority !== 'bulk') {
    throw new PoolError('INVALID_INPUT', `priority must be "auto", "interactive" or "bulk", got ${shown(priority)}`)
  }
  if (typeof logger !== 'boolean')
    throw new PoolError('INVALID_INPUT', `logger must be a boolean, got ${shown(logger)}`)
  return {
    apiKey,
    maxBodyBytes: positiveInt('maxBodyBytes', given.maxBodyBytes, 16 << 20),
    maxItems: integer('maxItems', given.maxItems, 1, 1 << 20, 2048),
    maxTextLength: positiveInt('maxTextLength', given.maxTextLength, 100_000),
    timeoutMs: integer('timeoutMs', given.timeoutMs, 1, MAX_INT, 60_000),
    priority,
    logger,
  }
}

/** The body of `POST /v1/embeddings`, as OpenAI's API takes it. */
export interface OpenAIRequest {
  input: string | string[]
  model?: string
  encoding_format?: 'float' | 'base64'
  dimensions?: number
  user?: string
}

/** The body of `POST /embed`, as text-embeddings-inference takes it. */
export interface TeiRequest {
  inputs: string | string[]
  normalize?: boolean
  truncate?: boolean
  truncation_direction?: 'left' | 'right' | 'Left' | 'Right'
  prompt_name?: string | null
  dimensions?: number
}

/** `input` / `inputs` / `prompt`: a string or an array of strings (token arrays are not taken). */
export const TEXTS_SCHEMA = { anyOf: [{ type: 'string' }, { type: 'array', minItems: 1, items: { type: 'string' } }] }

/** JSON schema of {@link OpenAIRequest}: unknown keys are refused, as OpenAI's API does. */
export const OPENAI_SCHEMA = {
  type: 'object',
  required: ['input'],
  additionalProperties: false,
  properties: {
    input: TEXTS_SCHEMA,
    model: { type: 'string' },
    encoding_format: { enum: ['float', 'base64'] },
    dimensions: { type: 'integer', minimum: 1 },
    user: { type: 'string' },
  },
} as const

/** JSON schema of {@link TeiRequest}. */
export const TEI_SCHEMA = {
  type: 'object',
  required: ['inputs'],
  additionalProperties: false,
  properties: {
    inputs: TEXTS_SCHEMA,
    normalize: { type: 'boolean' },
    truncate: { type: 'boolean' },
    truncation_direction: { enum: ['left', 'right', 'Left', 'Right'] },
    prompt_name: { type: ['string', 'null'] },
    dimensions: { type: 'integer', minimum: 1 },
  },
} as const

/** Which API a route speaks, for the shape of its errors. */
export type Dialect = 'openai' | 'tei'

/** An error with the HTTP status and body it is answered with. */
export class HttpError extends Error {
  readonly status: number
  /** OpenAI's `error.type`, TEI's `error_type`. */
  readonly type: string
  /** OpenAI's `error.code`. */
  readonly code: string | null
  /** OpenAI's `error.param`: the request field at fault. */
  readonly param: string | null
  /** Seconds before a retry may succeed (429). */
  readonly retryAfter: number | undefined

  constructor(
    status: number,
    message: string,
    details: { type?: string; code?: string; param?: string; retryAfter?: number; cause?: unknown } = {},
  ) {
    super(message, { cause: details.cause })
    this.name = 'HttpError'
    this.status = status
    this.type = details.type ?? (status >= 500 ? 'server_error' : 'invalid_request_error')
    this.code = details.code ?? null
    this.param = details.param ?? null
    this.retryAfter = details.retryAfter
  }
}

/** The texts of a request, with its limits checked. */
export function texts(input: string | string[], field: string, settings: ServerSettings): string[] {
  const list = typeof input === 'string' ? [input] : input
  if (list.length > settings.maxItems) {
    throw new HttpError(413, `${field} has ${list.length} texts; at most ${settings.maxItems} are taken per request`, {
      param: field,
      code: 'too_many_inputs',
    })
  }
  const long = list.findIndex((text) => text.length > settings.maxTextLength)
  if (long >= 0) {
    throw new HttpError(
      413,
      `${field}[${long}] has ${list[long].length} characters; at most ${settings.maxTextLength} are taken`,
      { param: field, code: 'input_too_long' },
    )
  }
  return list
}

/** The TEI request's options this server cannot honour, refused with 422. */
export function checkTeiOptions(body: TeiRequest): void {
  if (body.truncation_direction !== undefined && body.truncation_direction.toLowerCase() === 'left') {
    throw new HttpError(422, 'truncation_direction "left" is not supported: texts are truncated on the right', {
      param: 'truncation_direction',
    })
  }
  if (body.prompt_name != null) {
    throw new HttpError(422, 'prompt_name is not supported: this server has no prompts', { param: 'prompt_name' })
  }
}

/**
 * `row` cut to its first `dimensions` values and scaled back to unit length (as OpenAI's
 * shortened embeddings are); `row` itself when `dimensions` is undefined or its full width.
 *
 * @throws {HttpError} 400 when `dimensions` is wider than the model's vectors.
 */
export function shorten(row: Float32Array, dimensions: number | undefined): Float32Array {
  if (dimensions === undefined || dimensions === row.length) return row
  if (dimensions > row.length) {
    throw new HttpError(400, `dimensions must be at most the model's ${row.length}, got ${dimensions}`, {
      param: 'dimensions',
    })
  }
  return unit(row.subarray(0, dimensions))
}

/** `row` scaled to unit length (a copy; a zero vector stays zero). */
export function unit(row: Float32Array): Float32Array {
  let sum = 0
  for (const x of row) sum += x * x
  const norm = Math.sqrt(sum)
  const out = new Float32Array(row.length)
  if (norm > 0) for (let i = 0; i < row.length; i++) out[i] = row[i] / norm
  return out
}

/** Whether `row` has unit length, within float32 rounding. */
export function isUnit(row: Float32Array): boolean {
  let sum = 0
  for (const x of row) sum += x * x
  return Math.abs(sum - 1) < 1e-4
}

const LITTLE_ENDIAN = endianness() === 'LE'

/** `row` as base64 of its little-endian float32 bytes, as OpenAI's `encoding_format: "base64"`. */
export function base64(row: Float32Array): string {
  const bytes = Buffer.from(row.buffer, row.byteOffset, row.byteLength)
  return (LITTLE_ENDIAN ? bytes : Buffer.from(bytes).swap32()).toString('base64')
}

/** HTTP status of each {@link PoolErrorCode}. */
const STATUS: Record<PoolErrorCode, number> = {
  INVALID_INPUT: 400,
  MODEL_NOT_FOUND: 500,
  MODEL_INVALID: 500,
  MODEL_FETCH_FAILED: 500,
  ORT_LOAD_FAILED: 500,
  NATIVE_BINDING_MISSING: 500,
  REMOTE_UNAVAILABLE: 503,
  DEVICE_UNAVAILABLE: 503,
  MODEL_UNAVAILABLE: 503,
  INFERENCE_FAILED: 500,
  POOL_CLOSED: 503,
  OVERLOADED: 429,
  TIMEOUT: 504,
  // The client has gone; nobody reads it.
  ABORTED: 499,
  INTERNAL: 500,
}

/** TEI's `error_type` of each status it answers with. */
function teiType(status: number): string {
  if (status === 429) return 'overloaded'
  if (status === 503) return 'unhealthy'
  if (status >= 500) return 'backend'
  return 'validation'
}

/**
 * `error` as an {@link HttpError}: a pool error by its code (`retryAfter` seconds for
 * `OVERLOADED`), fastify's own errors (validation, body size, JSON) by their status.
 */
export function toHttpError(error: unknown, retryAfter: () => number): HttpError {
  if (error instanceof HttpError) return error
  if (error instanceof PoolError) {
    const status = STATUS[error.code]
    return new HttpError(status, error.message, {
      code: error.code.toLowerCase(),
      type: status === 429 ? 'rate_limit_error' : undefined,
      retryAfter: status === 429 ? retryAfter() : undefined,
      cause: error,
    })
  }
  const fields = (typeof error === 'object' && error !== null ? error : {}) as {
    statusCode?: unknown
    message?: unknown
    code?: unknown
    validation?: unknown
  }
  const status = typeof fields.statusCode === 'number' && fields.statusCode >= 400 ? fields.statusCode : 500
  const message = status >= 500 ? 'internal server error' : String(fields.message ?? 'bad request')
  const code = fields.validation !== undefined ? 'invalid_value' : status === 413 ? 'request_too_large' : undefined
  return new HttpError(status, message, { code, cause: error })
}

/** The status (400 becomes TEI's 422) and the body of `error` in `dialect`. */
export function errorBody(error: HttpError, dialect: Dialect): { status: number; body: object } {
  if (dialect === 'tei') {
    const status = error.status === 400 ? 422 : error.status
    return { status, body: { error: error.message, error_type: teiType(status) } }
  }
  return {
    status: error.status,
    body: { error: { message: error.message, type: error.type, param: error.param, code: error.code } },
  }
}
