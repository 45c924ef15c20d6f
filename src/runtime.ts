import { existsSync, readdirSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, isAbsolute, join, resolve } from 'node:path'

import { PoolError, fromNative } from './errors.js'
import { native } from './native.js'

/** The ONNX Runtime library in use. */
export interface RuntimeInfo {
  /** Absolute path of the loaded library. */
  path: string
  /** Version the library reports, e.g. `1.29.0`. */
  version: string
}

const LIBRARY_NAME: Partial<Record<NodeJS.Platform, RegExp>> = {
  linux: /^libonnxruntime\.so(\.\d+)*$/,
  darwin: /^libonnxruntime(\.\d+)*\.dylib$/,
  win32: /^onnxruntime\.dll$/,
}

/**
 * The ONNX Runtime library shipped in the `onnxruntime-node` package for this platform:
 * `bin/napi-v6/<platform>/<arch>/`.
 *
 * @throws {PoolError} `ORT_LOAD_FAILED` when the package or the file is missing.
 */
export function bundledLibraryPath(): string {
  const require = createRequire(import.meta.url)
  let packageDir: string
  try {
    packageDir = dirname(require.resolve('onnxruntime-node/package.json'))
  } catch (cause) {
    throw new PoolError(
      'ORT_LOAD_FAILED',
      'the onnxruntime-node package is not installed; install it or set ortLibraryPath / ORT_DYLIB_PATH',
      { cause },
    )
  }
  const dir = join(packageDir, 'bin', 'napi-v6', process.platform, process.arch)
  const pattern = LIBRARY_NAME[process.platform]
  const found =
    pattern && existsSync(dir)
      ? readdirSync(dir)
          .filter((f) => pattern.test(f))
          .sort()
      : []
  if (found.length === 0) {
    throw new PoolError(
      'ORT_LOAD_FAILED',
      `onnxruntime-node ships no ONNX Runtime library for ${process.platform}/${process.arch} (looked in ${dir}); set ortLibraryPath or ORT_DYLIB_PATH`,
    )
  }
  return join(dir, found[0])
}

/**
 * Which library to load: the `ortLibraryPath` option, else `ORT_DYLIB_PATH`, else the one in
 * `onnxruntime-node`. Always absolute (relative paths resolve against the working directory).
 */
export function resolveLibraryPath(option?: string): string {
  const chosen = option ?? (process.env.ORT_DYLIB_PATH || undefined) ?? bundledLibraryPath()
  return isAbsolute(chosen) ? chosen : resolve(chosen)
}

/**
 * Loads ONNX Runtime once per process.
 *
 * @throws {PoolError} `ORT_LOAD_FAILED` naming the path, and the version found when it is too old.
 */
export function initRuntime(option?: string): RuntimeInfo {
  const path = resolveLibraryPath(option)
  try {
    return native().initRuntimeLibrary(path)
  } catch (error) {
    throw fromNative(error)
  }
}
