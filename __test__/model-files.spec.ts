import { mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, describe, expect, it } from 'vitest'

import { Pool, PoolError } from '../src/index.js'
import { MAX_POSITIONS, writeTinyBert } from './fixtures/tiny-bert.js'

const folders: string[] = []

/** A fresh copy of the tiny model whose `name` is replaced by `replace(path)`. */
function folderWith(name: string, replace: (path: string) => void): string {
  const dir = writeTinyBert(mkdtempSync(join(tmpdir(), 'inferpool-files-')))
  folders.push(dir)
  rmSync(join(dir, name), { force: true })
  replace(join(dir, name))
  return dir
}

/** Pool.create's error for `dir`, and how long it took to fail. */
async function createFailure(dir: string): Promise<{ error: PoolError; ms: number }> {
  const started = performance.now()
  const error = await Pool.create({ model: dir, cpuWorkers: 1 }).then(
    async (pool) => {
      await pool.close()
      throw new Error(`the model in ${dir} loaded`)
    },
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(PoolError)
  return { error: error as PoolError, ms: performance.now() - started }
}

afterAll(() => {
  for (const dir of folders) rmSync(dir, { recursive: true, force: true })
})

describe('model folder files', () => {
  for (const name of ['config.json', 'tokenizer_config.json', 'tokenizer.json']) {
    it(`refuses ${name} linked to /dev/zero at once, with MODEL_INVALID`, async () => {
      const dir = folderWith(name, (path) => symlinkSync('/dev/zero', path))
      const { error, ms } = await createFailure(dir)
      expect(error.code, error.message).toBe('MODEL_INVALID')
      expect(error.message).toContain(join(dir, name))
      expect(error.message).toMatch(/is a character device; a model file must be a regular file/)
      expect(ms).toBeLessThan(5000)
    })
  }

  it('refuses a directory in place of config.json, and follows a link to a regular file', async () => {
    const dir = folderWith('config.json', (path) => mkdirSync(path))
    const { error } = await createFailure(dir)
    expect(error.code, error.message).toBe('MODEL_INVALID')
    expect(error.message).toMatch(/config\.json is a directory/)

    const elsewhere = mkdtempSync(join(tmpdir(), 'inferpool-config-'))
    folders.push(elsewhere)
    writeFileSync(join(elsewhere, 'config.json'), JSON.stringify({ max_position_embeddings: 8 }))
    rmSync(join(dir, 'config.json'), { recursive: true })
    symlinkSync(join(elsewhere, 'config.json'), join(dir, 'config.json'))
    const pool = await Pool.create({ model: dir, cpuWorkers: 1 })
    try {
      expect(MAX_POSITIONS).toBeGreaterThan(8)
      expect(pool.maxLength).toBe(8)
      expect(await pool.embed(['the man is eating'])).toHaveLength(1)
    } finally {
      await pool.close()
    }
  })

  it('refuses files over their size limit and names the limit', async () => {
    // Sparse files: the size is what is checked, nothing is written or read.
    const config = folderWith('config.json', (path) => {
      writeFileSync(path, '')
      truncateSync(path, 2 * 1024 * 1024)
    })
    const big = await createFailure(config)
    expect(big.error.code, big.error.message).toBe('MODEL_INVALID')
    expect(big.error.message).toMatch(/config\.json is 2097152 bytes, more than the 1 MiB limit/)

    const tokenizer = folderWith('tokenizer.json', (path) => {
      writeFileSync(path, '')
      truncateSync(path, 65 * 1024 * 1024)
    })
    const huge = await createFailure(tokenizer)
    expect(huge.error.code, huge.error.message).toBe('MODEL_INVALID')
    expect(huge.error.message).toMatch(/tokenizer\.json is 68157440 bytes, more than the 64 MiB limit/)
  })
})
