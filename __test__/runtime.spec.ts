import { execFileSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { describe, expect, it } from 'vitest'

import {
  Pool,
  PoolError,
  bundledLibraryPath,
  onnxruntimeNodeLibraryPath,
  resolveLibrary,
  resolveLibraryPath,
} from '../src/index.js'
import { TINY_BERT } from './helpers.js'

// This file runs in its own process (vitest forks, one file per process): ONNX Runtime is not
// loaded yet when it starts, and is loaded once, by the last test.

function hasCompiler(): boolean {
  try {
    execFileSync('cc', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** A shared library that exports OrtGetApiBase like ONNX Runtime 1.17 would. */
function fakeOldRuntime(): string {
  const dir = mkdtempSync(join(tmpdir(), 'inferpool-fake-ort-'))
  const source = join(dir, 'fake.c')
  writeFileSync(
    source,
    `typedef struct { const void *(*GetApi)(unsigned); const char *(*GetVersionString)(void); } Base;
static const void *get_api(unsigned v) { (void)v; return 0; }
static const char *version(void) { return "1.17.0"; }
static const Base base = { get_api, version };
const Base *OrtGetApiBase(void) { return &base; }
`,
  )
  const library = join(dir, 'libonnxruntime.so.1')
  execFileSync('cc', ['-shared', '-fPIC', '-o', library, source])
  return library
}

describe('loading ONNX Runtime', () => {
  it('prefers an installed onnxruntime-node, as an absolute path', () => {
    // From a clone onnxruntime-node is a development dependency and no platform package is installed.
    const path = onnxruntimeNodeLibraryPath()
    expect(path).toMatch(/onnxruntime-node[\\/]bin[\\/]napi-v6[\\/]/)
    expect(resolveLibrary()).toEqual({ path, source: 'onnxruntime-node' })
    expect(bundledLibraryPath()).toBeUndefined()
    expect(resolveLibrary('relative/lib.so')).toEqual({
      path: join(process.cwd(), 'relative/lib.so'),
      source: 'option',
    })
  })

  it('names the path when the library is missing', async () => {
    const error = await Pool.create({ model: TINY_BERT, ortLibraryPath: '/nowhere/libonnxruntime.so' }).catch((e) => e)
    expect(error).toBeInstanceOf(PoolError)
    expect(error.code).toBe('ORT_LOAD_FAILED')
    expect(error.message).toContain('/nowhere/libonnxruntime.so')
  })

  it('takes ORT_DYLIB_PATH when no option is given', async () => {
    process.env.ORT_DYLIB_PATH = '/from/env/libonnxruntime.so'
    try {
      expect(resolveLibrary()).toEqual({ path: '/from/env/libonnxruntime.so', source: 'env' })
      const error = await Pool.create({ model: TINY_BERT }).catch((e) => e)
      expect(error.code).toBe('ORT_LOAD_FAILED')
      expect(error.message).toContain('/from/env/libonnxruntime.so')
    } finally {
      delete process.env.ORT_DYLIB_PATH
    }
  })

  it.runIf(process.platform === 'linux' && hasCompiler())('names the version when the library is too old', async () => {
    const library = fakeOldRuntime()
    const error = await Pool.create({ model: TINY_BERT, ortLibraryPath: library }).catch((e) => e)
    expect(error.code).toBe('ORT_LOAD_FAILED')
    expect(error.message).toContain(library)
    expect(error.message).toContain('1.17.0')
  })

  it('then loads the real library and reports its version', async () => {
    const pool = await Pool.create({ model: TINY_BERT, cpuWorkers: 1 })
    try {
      expect(pool.runtime).toEqual({ path: resolveLibraryPath(), version: '1.29.0', source: 'onnxruntime-node' })
    } finally {
      await pool.close()
    }
  })
})
