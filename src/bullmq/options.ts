// The options of `RemotePool.create` and `serveQueue`, checked against their ranges and known
// keys, with their defaults filled in.

import type { ConnectionOptions } from 'bullmq'

import { MAX_INT, checkKeys, integer, positiveInt, shown } from '../check.js'
import { PoolError } from '../errors.js'
import { DEFAULT_PREFIX } from './wire.js'

/** Where Redis is: a `redis://` or `rediss://` URL, or BullMQ's connection options. */
export type Connection = string | ConnectionOptions

/** Options of {@link RemotePool.create}. Only `connection` is required. */
export interface RemotePoolOptions {
  /** Redis: a `redis://[user:password@]host:port[/db]` URL, or BullMQ's connection options. */
  connection: Connection
  /** Names of the models the workers serve (one queue each). Default `['default']`. */
  models?: string[]
  /** The model `embed` uses without `{ model }`. Default: the first of `models`. */
  defaultModel?: string
  /** BullMQ key prefix; clients and workers must agree. Default `'inferpool'`. */
  prefix?: string
  /** Most texts in one job: calls are coalesced into jobs up to this many texts. Default 64. */
  maxJobTexts?: number
  /**
   * How long a job may stay open for more calls before it is sent, milliseconds. Default 2;
   * 0 still coalesces the calls made in the same tick.
   */
  coalesceMs?: number
  /** Runs of a job, the first included, when a worker fails it with `INFERENCE_FAILED`. Default 3. */
  attempts?: number
  /** Back-off before the first retry, milliseconds, doubling with each retry. Default 500. */
  backoffMs?: number
  /**
   * How long calls wait while no worker serving their model is connected, milliseconds, before
   * they fail with `REMOTE_UNAVAILABLE` (their jobs not started are removed). A call made when
   * none has been seen for this long fails at once. Default 30000.
   */
  unavailableAfterMs?: number
  /** How long {@link RemotePool.create} waits for Redis, milliseconds. Default 10000. */
  connectTimeoutMs?: number
  /**
   * How often outstanding jobs are checked in Redis, milliseconds: a result whose event was
   * missed is still delivered, a lost job fails its calls, and the workers are counted.
   * Default 1000.
   */
  checkIntervalMs?: number
  /**
   * How long a finished job whose result nobody took (its client went away) stays in Redis,
   * seconds. A delivered result is removed at once. Default 3600.
   */
  keepResultsSeconds?: number
  /**
   * Most events kept in each queue's BullMQ event stream (approximately). Results travel in
   * it: this bounds its memory. Default 1000.
   */
  eventsMaxLen?: number
}

/** Options of {@link serveQueue}. Only `connection` is required. */
export interface ServeQueueOptions {
  /** Redis, as {@link RemotePoolOptions.connection}. */
  connection: Connection
  /** Models of the pool to serve, by name (one queue each). Default: every model of the pool. */
  models?: string[]
  /**
   * Jobs run at once per model; their texts are batched together by the pool. Default 16.
   */
  concurrency?: number
  /** BullMQ key prefix, as the clients'. Default `'inferpool'`. */
  prefix?: string
  /**
   * How long a job's lock lasts without renewal, milliseconds (renewed at half of it while the
   * job runs). A worker that dies or stops for longer loses its jobs to the others. Default 30000.
   */
  lockDurationMs?: number
  /** How often the worker looks for jobs whose lock expired (stalled), milliseconds. Default 30000. */
  stalledIntervalMs?: number
  /** Times a job may stall (its worker died) and be recovered before it fails. Default 1. */
  maxStalledCount?: number
  /** How long the queue pauses when the pool is full (`OVERLOADED`), milliseconds. Default 200. */
  overloadDelayMs?: number
  /** Starts of one job beyond which `OVERLOADED` fails it instead of putting it back. Default 50. */
  maxOverloadedStarts?: number
  /** A name for this worker, stored on every job it runs. Default: `<hostname>:<pid>`. */
  name?: string
  /** How long {@link serveQueue} waits for Redis, milliseconds. Default 10000. */
  connectTimeoutMs?: number
}

const REMOTE_KEYS: Record<keyof RemotePoolOptions, true> = {
  connection: true,
  models: true,
  defaultModel: true,
  prefix: true,
  maxJobTexts: true,
  coalesceMs: true,
  attempts: true,
  backoffMs: true,
  unavailableAfterMs: true,
  connectTimeoutMs: true,
  checkIntervalMs: true,
  keepResultsSeconds: true,
  eventsMaxLen: true,
}

const SERVE_KEYS: Record<keyof ServeQueueOptions, true> = {
  connection: true,
  models: true,
  concurrency: true,
  prefix: true,
  lockDurationMs: true,
  stalledIntervalMs: true,
  maxStalledCount: true,
  overloadDelayMs: true,
  maxOverloadedStarts: true,
  name: true,
  connectTimeoutMs: true,
}

/** Most jobs one worker runs at once per model. */
const MAX_CONCURRENCY = 4096
/** Most texts in one job. */
const MAX_JOB_TEXTS = 65536

/** {@link RemotePoolOptions}, checked, with defaults. */
export type ResolvedRemoteOptions = Required<Omit<RemotePoolOptions, 'connection'>> & {
  connection: ConnectionOptions
}

/**
 * Checks the options of `RemotePool.create` and fills in their defaults.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the first option that is wrong or unknown.
 */
export function resolveRemoteOptions(options: RemotePoolOptions): ResolvedRemoteOptions {
  checkKeys(options, REMOTE_KEYS)
  const models = modelNames(options.models, ['default'])
  const defaultModel = options.defaultModel ?? models[0]
  if (!models.includes(defaultModel)) {
    throw new PoolError('INVALID_INPUT', `defaultModel ${shown(defaultModel)} is not one of the models`)
  }
  return {
    connection: connectionOptions(options.connection),
    models,
    defaultModel,
    prefix: prefixOption(options.prefix),
    maxJobTexts: integer('maxJobTexts', options.maxJobTexts, 1, MAX_JOB_TEXTS, 64),
    coalesceMs: integer('coalesceMs', options.coalesceMs, 0, MAX_INT, 2),
    attempts: integer('attempts', options.attempts, 1, 1000, 3),
    backoffMs: integer('backoffMs', options.backoffMs, 0, MAX_INT, 500),
    unavailableAfterMs: integer('unavailableAfterMs', options.unavailableAfterMs, 0, MAX_INT, 30_000),
    connectTimeoutMs: positiveInt('connectTimeoutMs', options.connectTimeoutMs, 10_000),
    checkIntervalMs: integer('checkIntervalMs', options.checkIntervalMs, 10, MAX_INT, 1000),
    keepResultsSeconds: positiveInt('keepResultsSeconds', options.keepResultsSeconds, 3600),
    eventsMaxLen: integer('eventsMaxLen', options.eventsMaxLen, 10, MAX_INT, 1000),
  }
}

/** {@link ServeQueueOptions}, checked, with defaults (`models` still to be checked against the pool). */
export type ResolvedServeOptions = Required<Omit<ServeQueueOptions, 'connection' | 'models'>> & {
  connection: ConnectionOptions
  models: string[] | undefined
}

/**
 * Checks the options of `serveQueue` and fills in their defaults.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the first option that is wrong or unknown.
 */
export function resolveServeOptions(options: ServeQueueOptions, defaultName: string): ResolvedServeOptions {
  checkKeys(options, SERVE_KEYS)
  const lockDurationMs = integer('lockDurationMs', options.lockDurationMs, 100, MAX_INT, 30_000)
  if (options.name !== undefined && (typeof options.name !== 'string' || options.name.length === 0)) {
    throw new PoolError('INVALID_INPUT', `name must be a non-empty string, got ${shown(options.name)}`)
  }
  return {
    connection: connectionOptions(options.connection),
    models: options.models === undefined ? undefined : modelNames(options.models, []),
    concurrency: integer('concurrency', options.concurrency, 1, MAX_CONCURRENCY, 16),
    prefix: prefixOption(options.prefix),
    lockDurationMs,
    stalledIntervalMs: integer('stalledIntervalMs', options.stalledIntervalMs, 10, MAX_INT, 30_000),
    maxStalledCount: integer('maxStalledCount', options.maxStalledCount, 0, 1000, 1),
    overloadDelayMs: integer('overloadDelayMs', options.overloadDelayMs, 1, MAX_INT, 200),
    maxOverloadedStarts: integer('maxOverloadedStarts', options.maxOverloadedStarts, 1, MAX_INT, 50),
    name: options.name ?? defaultName,
    connectTimeoutMs: positiveInt('connectTimeoutMs', options.connectTimeoutMs, 10_000),
  }
}

/**
 * BullMQ connection options of `connection`: a URL becomes `{ url }` (parsed by ioredis).
 *
 * @throws {PoolError} `INVALID_INPUT` for anything but a `redis:`/`rediss:` URL or an object.
 */
export function connectionOptions(connection: unknown): ConnectionOptions {
  if (typeof connection === 'string') {
    let url: URL
    try {
      url = new URL(connection)
    } catch {
      throw new PoolError('INVALID_INPUT', `connection must be a redis:// URL, got ${shown(connection)}`)
    }
    if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
      throw new PoolError('INVALID_INPUT', `connection must be a redis:// or rediss:// URL, got ${url.protocol}//…`)
    }
    return { url: connection }
  }
  if (connection === null || typeof connection !== 'object' || Array.isArray(connection)) {
    throw new PoolError(
      'INVALID_INPUT',
      `connection must be a redis:// URL or connection options, got ${shown(connection)}`,
    )
  }
  return connection as ConnectionOptions
}

/**
 * `connection` with a reconnection strategy that can be told to stop: a client that could not
 * connect in time gives up (and its connections close) instead of retrying forever. Once
 * connected, it reconnects as BullMQ does by default (1 to 20 s apart). A client instance or
 * options with their own `retryStrategy` are left as they are.
 */
export function stoppable(connection: ConnectionOptions): { connection: ConnectionOptions; giveUp: () => void } {
  const given = connection as Record<string, unknown>
  if (typeof given.retryStrategy === 'function' || typeof given.duplicate === 'function') {
    return { connection, giveUp: () => undefined }
  }
  let stopped = false
  const retryStrategy = (times: number) => (stopped ? null : Math.max(Math.min(Math.exp(times), 20_000), 1000))
  return { connection: { ...given, retryStrategy }, giveUp: () => (stopped = true) }
}

function modelNames(models: unknown, fallback: string[]): string[] {
  if (models === undefined && fallback.length > 0) return fallback
  if (
    !Array.isArray(models) ||
    models.length === 0 ||
    !models.every((m) => typeof m === 'string' && m.length > 0) ||
    new Set(models).size !== models.length
  ) {
    throw new PoolError('INVALID_INPUT', 'models must be an array of distinct, non-empty model names')
  }
  return [...models]
}

function prefixOption(prefix: unknown): string {
  if (prefix === undefined) return DEFAULT_PREFIX
  if (typeof prefix !== 'string' || !/^[\w.-]+$/.test(prefix)) {
    throw new PoolError('INVALID_INPUT', `prefix must be letters, digits, "_", "." or "-", got ${shown(prefix)}`)
  }
  return prefix
}
