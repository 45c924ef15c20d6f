export {
  Pool,
  type EmbedOptions,
  type ModelSpec,
  type ModelStatus,
  type PoolEvent,
  type PoolEventType,
  type PoolOptions,
  type PoolStatus,
  type Pooling,
  type Priority,
  type Progress,
  type StreamItem,
  type StreamOptions,
  type WorkerState,
  type WorkerStatus,
} from './pool.js'
export { PoolError, type PoolErrorCode } from './errors.js'
export { DEFAULT_MODEL, defaultCacheDir, ensureDefaultModel } from './model.js'
export { type RuntimeInfo, bundledLibraryPath, resolveLibraryPath } from './runtime.js'
export { chunkText, type ChunkOptions } from './chunk.js'
