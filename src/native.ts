import { createRequire } from 'node:module'

import type * as Binding from './binding.cjs'
import { PoolError } from './errors.js'

/** The napi-rs binding; its loader picks the `.node` file for this platform. */
export type NativeBinding = typeof Binding

/** Platforms with a prebuilt addon: npm package suffix, by `platform-arch[-libc]`. */
export const PLATFORM_PACKAGES: Readonly<Record<string, string>> = {
  'linux-x64-glibc': 'linux-x64-gnu',
  'linux-arm64-glibc': 'linux-arm64-gnu',
  'darwin-arm64': 'darwin-arm64',
  'win32-x64': 'win32-x64-msvc',
}

let binding: NativeBinding | undefined

/**
 * Loads the native addon on first use.
 *
 * @throws {PoolError} `NATIVE_BINDING_MISSING` when no addon fits this platform or its package
 * is not installed.
 */
export function native(): NativeBinding {
  if (!binding) {
    const require = createRequire(import.meta.url)
    try {
      binding = require('./binding.cjs') as NativeBinding
    } catch (cause) {
      throw missingBinding(cause)
    }
  }
  return binding
}

let linuxLibc: 'glibc' | 'musl' | undefined

/** `glibc` or `musl` on Linux, from the process report; `undefined` elsewhere. */
export function libc(): 'glibc' | 'musl' | undefined {
  if (process.platform !== 'linux') return undefined
  // A process report walks the whole process; the C library does not change, so it is read once.
  if (!linuxLibc) {
    const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } })?.header
    linuxLibc = header?.glibcVersionRuntime ? 'glibc' : 'musl'
  }
  return linuxLibc
}

/** This platform's key in {@link PLATFORM_PACKAGES}. */
export function platformKey(): string {
  const c = libc()
  return `${process.platform}-${process.arch}${c ? `-${c}` : ''}`
}

/** The error for an addon that cannot be loaded: what was looked for, and what to do. */
export function missingBinding(cause: unknown): PoolError {
  const key = platformKey()
  const suffix = PLATFORM_PACKAGES[key]
  const supported = Object.values(PLATFORM_PACKAGES)
    .map((p) => `inferpool-${p}`)
    .join(', ')
  const c = libc()
  const where = `${process.platform} ${process.arch}${c ? ` (${c})` : ''}, Node.js ${process.version}`
  const looked = suffix
    ? `It looked for the package inferpool-${suffix}, which npm installs as an optional dependency of inferpool.`
    : 'No prebuilt addon exists for this platform.'
  const remedies = [
    suffix
      ? 'reinstall with optional dependencies (no --omit=optional / --no-optional; remove node_modules and the lock file if npm skipped it)'
      : undefined,
    'build it from a clone of the repository (needs Rust: npm install there builds the addon)',
    'or point NAPI_RS_NATIVE_LIBRARY_PATH at a built inferpool .node file',
  ].filter(Boolean)
  // napi's own message for a missing package blames npm; the cause keeps it.
  const message = cause instanceof Error ? cause.message.split('\n')[0] : ''
  const reason = message && !message.startsWith('Cannot find native binding') ? ` (${message})` : ''
  return new PoolError(
    'NATIVE_BINDING_MISSING',
    `inferpool's native addon could not be loaded on ${where}${reason}. ${looked} Prebuilt for: ${supported}. To fix: ${remedies.join('; ')}.`,
    { cause },
  )
}
