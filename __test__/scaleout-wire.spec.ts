// The scale-out pieces that need no Redis: the wire format, the failure policy, option checks,
// and the package layout that keeps bullmq out of the main entry.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { describe, expect, it } from 'vitest'

import { resolveRemoteOptions, resolveServeOptions } from '../src/bullmq/options.js'
import {
  checkJobData,
  decodeResult,
  disposition,
  encodeResult,
  failureError,
  failureReason,
  queueName,
} from '../src/bullmq/wire.js'
import { PoolError } from '../src/errors.js'

const DIST = join(import.meta.dirname, '..', 'dist')

function thrown(fn: () => unknown): PoolError {
  try {
    fn()
  } catch (error) {
    expect(error).toBeInstanceOf(PoolError)
    return error as PoolError
  }
  throw new Error('expected a throw')
}

describe('wire format', () => {
  it('carries vectors as little-endian float32 in base64, bit for bit', () => {
    const rows = [new Float32Array([1.5, -0, Math.PI, 1e-30]), new Float32Array([-2, 0.1, Infinity, -7])]
    const result = encodeResult(rows)
    expect(result.dimension).toBe(4)
    const bytes = Buffer.from(result.vectors, 'base64')
    expect(bytes.length).toBe(32)
    expect(bytes.readFloatLE(4 * 2)).toBe(Math.fround(Math.PI))
    expect(bytes.readFloatLE(4 * 5)).toBe(Math.fround(0.1))
    const back = decodeResult(JSON.parse(JSON.stringify(result)), 2)
    expect(back.map((v) => [...v])).toEqual(rows.map((v) => [...v]))
    // Views into one buffer, each of the row's width.
    expect(back[1].buffer).toBe(back[0].buffer)
  })

  it('refuses a result that is not one row per text', () => {
    const result = encodeResult([new Float32Array([1, 2, 3])])
    expect(thrown(() => decodeResult(result, 2)).code).toBe('INTERNAL')
    expect(thrown(() => decodeResult({ dimension: 3 }, 1)).code).toBe('INTERNAL')
    expect(thrown(() => decodeResult(null, 1)).code).toBe('INTERNAL')
  })

  it('carries a failure code and message, and reads any other reason as INFERENCE_FAILED', () => {
    const error = failureError(failureReason(new PoolError('MODEL_UNAVAILABLE', 'no room: 2 GB over\nbudget')))
    expect([error.code, error.message]).toEqual(['MODEL_UNAVAILABLE', 'no room: 2 GB over\nbudget'])
    const stalled = failureError('job stalled more than allowable limit')
    expect(stalled.code).toBe('INFERENCE_FAILED')
    expect(stalled.message).toContain('job stalled more than allowable limit')
    expect(failureError('NOT_A_CODE: x').code).toBe('INFERENCE_FAILED')
  })

  it('retries failed inference, puts an overloaded job back a bounded number of times, fails the rest', () => {
    expect(disposition('INFERENCE_FAILED', 1, 50)).toBe('retry')
    expect(disposition('POOL_CLOSED', 1, 50)).toBe('retry')
    expect(disposition('OVERLOADED', 49, 50)).toBe('rate-limit')
    expect(disposition('OVERLOADED', 50, 50)).toBe('fail')
    for (const code of ['INVALID_INPUT', 'MODEL_UNAVAILABLE', 'MODEL_INVALID', 'INTERNAL'] as const) {
      expect(disposition(code, 1, 50)).toBe('fail')
    }
  })

  it('checks job data and names one queue per model, safe for Redis keys', () => {
    expect(checkJobData({ texts: ['a'], priority: 'bulk' })).toEqual({ texts: ['a'], priority: 'bulk' })
    expect(thrown(() => checkJobData({ texts: [1], priority: 'bulk' })).code).toBe('INVALID_INPUT')
    expect(thrown(() => checkJobData({ texts: ['a'], priority: 'urgent' })).code).toBe('INVALID_INPUT')
    expect(queueName('multi:lingual')).toBe('embed.multi%3Alingual')
    expect(queueName('a')).not.toBe(queueName('b'))
  })
})

describe('options', () => {
  it('fills in the defaults', () => {
    const options = resolveRemoteOptions({ connection: 'redis://127.0.0.1:6379' })
    expect(options).toMatchObject({
      connection: { url: 'redis://127.0.0.1:6379' },
      models: ['default'],
      defaultModel: 'default',
      prefix: 'inferpool',
      maxJobTexts: 64,
      attempts: 3,
    })
    expect(resolveServeOptions({ connection: { host: 'redis' } }, 'me')).toMatchObject({
      connection: { host: 'redis' },
      models: undefined,
      concurrency: 16,
      name: 'me',
    })
  })

  it.each([
    [{ connection: 'redis://x', maxJobText: 8 }, /did you mean "maxJobTexts"/],
    [{ connection: 'http://x' }, /redis:\/\/ or rediss:\/\//],
    [{ connection: 'not a url' }, /redis:\/\/ URL/],
    [{ connection: 42 }, /connection must be/],
    [{ connection: 'redis://x', models: ['a', 'a'] }, /distinct/],
    [{ connection: 'redis://x', models: ['a'], defaultModel: 'b' }, /defaultModel "b"/],
    [{ connection: 'redis://x', maxJobTexts: 0 }, /maxJobTexts must be an integer from 1/],
    [{ connection: 'redis://x', prefix: 'a:b' }, /prefix/],
  ])('rejects client options %o', (options, message) => {
    const error = thrown(() => resolveRemoteOptions(options as never))
    expect(error.code).toBe('INVALID_INPUT')
    expect(error.message).toMatch(message)
  })

  it.each([
    [{ connection: 'redis://x', concurency: 2 }, /did you mean "concurrency"/],
    [{ connection: 'redis://x', concurrency: 0 }, /concurrency must be an integer from 1/],
    [{ connection: 'redis://x', lockDurationMs: 5 }, /lockDurationMs/],
    [{ connection: 'redis://x', models: [] }, /models must be/],
  ])('rejects worker options %o', (options, message) => {
    const error = thrown(() => resolveServeOptions(options as never, 'me'))
    expect(error.code).toBe('INVALID_INPUT')
    expect(error.message).toMatch(message)
  })
})

describe('package layout', () => {
  it('keeps bullmq out of the main entry and the CLI bundle; the subpath has both formats', () => {
    for (const file of ['index.js', 'index.cjs', 'cli.js']) {
      expect(readFileSync(join(DIST, file), 'utf8')).not.toMatch(/from "bullmq"|require\("bullmq"\)/)
    }
    expect(readFileSync(join(DIST, 'bullmq.js'), 'utf8')).toMatch(/from "bullmq"/)
    expect(readFileSync(join(DIST, 'bullmq.cjs'), 'utf8')).toMatch(/require\("bullmq"\)/)
    const pkg = JSON.parse(readFileSync(join(DIST, '..', 'package.json'), 'utf8'))
    expect(pkg.exports['./bullmq'].import.default).toBe('./dist/bullmq.js')
    expect(pkg.peerDependenciesMeta.bullmq.optional).toBe(true)
  })

  it('makes PoolError of every entry point and format pass instanceof', async () => {
    const main = await import(join(DIST, 'index.js'))
    const scaleout = await import(join(DIST, 'bullmq.js'))
    const { createRequire } = await import('node:module')
    const cjs = createRequire(import.meta.url)(join(DIST, 'bullmq.cjs'))
    const error = await scaleout.RemotePool.create({ connection: 'ftp://x' }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(main.PoolError)
    expect(error).toBeInstanceOf(cjs.PoolError)
    expect(error).toBeInstanceOf(PoolError)
    expect(new Error('x')).not.toBeInstanceOf(main.PoolError)
  })
})
