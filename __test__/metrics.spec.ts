import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool } from '../src/index.js'
import { TINY_BERT } from './helpers.js'

// Two workers on the tiny model: every line of the exposition must have the text format's shape
// (HELP and TYPE before the samples of their family), and its numbers must equal what was
// submitted.

interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

/** Reads Prometheus text format 0.0.4, strictly: throws on any line of another shape. */
function parseExposition(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>()
  const samples: Sample[] = []
  const family = (name: string) => name.replace(/_(bucket|sum|count)$/, '')
  for (const line of text.trimEnd().split('\n')) {
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line)
    if (meta) {
      if (meta[1] === 'TYPE') types.set(meta[2], meta[3])
      continue
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!sample) throw new Error(`not a sample line: ${line}`)
    const [, name, body = '', value] = sample
    if (!types.has(name) && !types.has(family(name))) throw new Error(`sample before its TYPE: ${line}`)
    const labels: Record<string, string> = {}
    const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y
    for (let m = pair.exec(body); m; m = pair.exec(body)) labels[m[1]] = m[2]
    if (pair.lastIndex !== 0 && pair.lastIndex !== body.length) throw new Error(`bad labels: ${line}`)
    const number = value === '+Inf' ? Infinity : Number(value)
    if (Number.isNaN(number)) throw new Error(`bad value: ${line}`)
    samples.push({ name, labels, value: number })
  }
  return { types, samples }
}
describe('metrics()', () => {
  let pool: Pool
  beforeAll(async () => {
    pool = await Pool.create({ models: { 'tiny-bert': TINY_BERT }, cpuWorkers: 2, maxBatchSize: 8 })
  })
  afterAll(() => pool?.close())

  it('counts every text, call and batch, labelled by model, device and worker', async () => {
    const calls = Array.from({ length: 30 }, (_, c) =>
      Array.from({ length: 1 + (c % 7) }, (_, i) => `call ${c} text ${i} ${'word '.repeat(i)}`),
    )
    await Promise.all(calls.map((texts) => pool.embed(texts)))
    const texts = calls.reduce((n, c) => n + c.length, 0)
    const { types, samples } = parseExposition(pool.metrics())
    const total = (name: string, labels: Record<string, string> = {}) =>
      samples
        .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
        .reduce((n, s) => n + s.value, 0)

    expect(types.get('inferpool_items_total')).toBe('counter')
    expect(types.get('inferpool_request_duration_seconds')).toBe('histogram')
    expect(total('inferpool_items_total')).toBe(texts)
    const status = pool.status()
    expect(total('inferpool_batches_total')).toBe(status.workers.reduce((n, w) => n + w.batches, 0))
    expect(total('inferpool_errors_total')).toBe(0)
    expect(total('inferpool_queued_items')).toBe(0)
    for (const s of samples.filter((s) => s.name === 'inferpool_items_total')) {
      expect(s.labels).toMatchObject({ model: 'tiny-bert', device: 'cpu' })
      expect(['0', '1']).toContain(s.labels.worker)
    }

    expect(total('inferpool_request_duration_seconds_count')).toBe(calls.length)
    expect(total('inferpool_request_duration_seconds_bucket', { le: '+Inf' })).toBe(calls.length)
    expect(total('inferpool_request_duration_seconds_sum')).toBeGreaterThan(0)
    expect(total('inferpool_tokenize_seconds_count')).toBe(calls.length)
    expect(total('inferpool_queue_wait_seconds_count')).toBe(texts)
    expect(total('inferpool_batch_size_sum')).toBe(texts)
    expect(total('inferpool_batch_size_count')).toBe(total('inferpool_batches_total'))
    // Buckets are cumulative, per worker.
    for (const worker of ['0', '1']) {
      const counts = samples
        .filter((s) => s.name === 'inferpool_inference_seconds_bucket' && s.labels.worker === worker)
        .map((s) => s.value)
      expect(counts.length).toBeGreaterThan(2)
      expect(counts).toEqual([...counts].sort((a, b) => a - b))
    }
  })
})
