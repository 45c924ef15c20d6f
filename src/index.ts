export { Pool } from './pool.js'
export type {
  CacheOptions,
  CacheStatus,
  EmbedOptions,
  EmbedResult,
  FinishReason,
  GenerateDelta,
  GenerateOptions,
  Generated,
  GenerationStatus,
  ModelKind,
  ModelSpec,
  ModelStatus,
  PoolEvent,
  PoolEventType,
  PoolOptions,
  PoolStatus,
  Pooling,
  Priority,
  Progress,
  StreamItem,
  StreamOptions,
  WorkerState,
  WorkerStatus,
} from './types.js'
export { PoolError, type PoolErrorCode } from './errors.js'
export { DEFAULT_MODEL, defaultCacheDir, ensureDefaultModel } from './model.js'
export {
  type RuntimeInfo,
  type RuntimeSource,
  bundledLibraryPath,
  onnxruntimeNodeLibraryPath,
  resolveLibrary,
  resolveLibraryPath,
} from './runtime.js'
export { chunkText, type ChunkOptions } from './chunk.js'
