import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, isAbsolute, join, resolve } from 'node:path'

import { PoolError, fromNative } from './errors.js'
import { PLATFORM_PACKAGES, native, platformKey } from './native.js'

/** Where the ONNX Runtime library in use came from. */
export type RuntimeSource = 'option' | 'env' | 'onnxruntime-node' | 'bundled'

/** The ONNX Runtime library in use. */
export interface RuntimeInfo {
  /** Absolute path of the loaded library. */
  path: string
  /** Version the library reports, e.g. `1.29.0`. */
  version: string
  /**
   * Where it came from: the `ortLibraryPath` option, `ORT_DYLIB_PATH`, an installed
   * `onnxruntime-node` package (1.29 or newer), or the library bundled in inferpool's platform
   * package.
   */
  source: RuntimeSource
}

/** The ONNX Runtime version the addon is built against; older libraries are refused. */
const MIN_VERSION = [1, 29]

const LIBRARY_NAME: Partial<Record<NodeJS.Platform, RegExp>> = {
  linux: /^libonnxruntime\.so(\.\d+)*$/,
  darwin: /^libonnxruntime(\.\d+)*\.dylib$/,
  win32: /^onnxruntime\.dll$/,
}

/** The first ONNX Runtime library in `dir`, by name; `undefined` when there is none. */
function libraryIn(dir: string): string | undefined {
  const pattern = LIBRARY_NAME[process.platform]
  if (!pattern || !existsSync(dir)) return undefined
  const found = readdirSync(dir)
    .filter((f) => pattern.test(f))
    .sort()
  return found.length > 0 ? join(dir, found[0]) : undefined
}

/** The folder of an installed package, or `undefined`. */
function packageDir(name: string): string | undefined {
  try {
    return dirname(createRequire(import.meta.url).resolve(`${name}/package.json`))
  } catch {
    return undefined
  }
}

/**
 * The library of an installed `onnxruntime-node` package, 1.29 or newer, for this platform
 * (`bin/napi-v6/<platform>/<arch>/`); `undefined` when there is none.
 */
export function onnxruntimeNodeLibraryPath(): string | undefined {
  const dir = packageDir('onnxruntime-node')
  if (!dir) return undefined
  const version = String(JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version ?? '')
  const [major, minor] = version.split('.').map(Number)
  if (!(major > MIN_VERSION[0] || (major === MIN_VERSION[0] && minor >= MIN_VERSION[1]))) return undefined
  return libraryIn(join(dir, 'bin', 'napi-v6', process.platform, process.arch))
}

/**
 * The library bundled in inferpool's platform package (`inferpool-<platform>`); `undefined` when
 * that package is not installed.
 */
export function bundledLibraryPath(): string | undefined {
  const suffix = PLATFORM_PACKAGES[platformKey()]
  const dir = suffix ? packageDir(`inferpool-${suffix}`) : undefined
  return dir ? libraryIn(dir) : undefined
}

/**
 * Which library to load, and why: the `ortLibraryPath` option, else `ORT_DYLIB_PATH`, else an
 * installed `onnxruntime-node` (1.29 or newer, e.g. for its CUDA provider files), else the one in
 * inferpool's platform package. Always absolute (relative paths resolve against the working
 * directory).
 *
 * @throws {PoolError} `ORT_LOAD_FAILED` when there is none of them.
 */
export function resolveLibrary(option?: string): { path: string; source: RuntimeSource } {
  const env = process.env.ORT_DYLIB_PATH || undefined
  const given = option || env
  if (given) return { path: isAbsolute(given) ? given : resolve(given), source: option ? 'option' : 'env' }
  const fromPackage = onnxruntimeNodeLibraryPath()
  if (fromPackage) return { path: fromPackage, source: 'onnxruntime-node' }
  const bundled = bundledLibraryPath()
  if (bundled) return { path: bundled, source: 'bundled' }
  throw new PoolError(
    'ORT_LOAD_FAILED',
    `no ONNX Runtime library found for ${process.platform}/${process.arch}: inferpool's platform package is not installed and neither is onnxruntime-node (1.29 or newer); set ortLibraryPath or ORT_DYLIB_PATH`,
  )
}

/** The path {@link resolveLibrary} picks. */
export function resolveLibraryPath(option?: string): string {
  return resolveLibrary(option).path
}

/**
 * Loads ONNX Runtime once per process.
 *
 * @throws {PoolError} `ORT_LOAD_FAILED` naming the path, and the version found when it is too old.
 */
export function initRuntime(option?: string): RuntimeInfo {
  // The addon first: without it nothing can load the library, and its error says what to do.
  const binding = native()
  const { path, source } = resolveLibrary(option)
  try {
    return { ...binding.initRuntimeLibrary(path), source }
  } catch (error) {
    throw fromNative(error)
  }
}
