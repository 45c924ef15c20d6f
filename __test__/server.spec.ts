import { request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'

import type { FastifyInstance } from 'fastify'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { errorBody, toHttpError } from '../src/api.js'
import { Pool, PoolError, type PoolErrorCode } from '../src/index.js'
import { createServer } from '../src/server.js'
import { TINY_BERT, TINY_BERT_WIDE } from './helpers.js'

const KEY = 'test-key-0123456789'
const TEXTS = ['', 'a', 'the man is eating food.', 'ünïcödé àccents', 'the '.repeat(100), 'emoji 🎉 here']

/** Listens on a free loopback port; resolves with the base URL. */
async function listen(app: FastifyInstance): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

/** POSTs `body` as JSON (with the API key unless `key` is null). */
function post(url: string, body: unknown, key: string | null = KEY): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key === null ? {} : { authorization: `Bearer ${key}` }) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  })
}

const get = (url: string, key: string | null = KEY) =>
  fetch(url, { headers: key === null ? {} : { authorization: `Bearer ${key}` } })

const rows = (embeddings: Float32Array[]) => embeddings.map((row) => Array.from(row))

describe('the OpenAI-compatible server, through the openai client', () => {
  let pool: Pool
  let app: FastifyInstance
  let client: OpenAI
  let base: string
  beforeAll(async () => {
    pool = await Pool.create({ models: { default: TINY_BERT, wide: TINY_BERT_WIDE }, cpuWorkers: 2 })
    app = await createServer(pool, { apiKey: KEY, maxItems: 64, maxTextLength: 2000, maxBodyBytes: 64 * 1024 })
    base = await listen(app)
    client = new OpenAI({ apiKey: KEY, baseURL: `${base}/v1`, maxRetries: 0 })
  })
  afterAll(async () => {
    await app?.close()
    await pool?.close()
  })

  it('answers the default (base64) call with what pool.embed gives, and the token usage', async () => {
    const response = await client.embeddings.create({ model: 'default', input: TEXTS })
    const expected = await pool.embedWithUsage(TEXTS)
    expect(response.model).toBe('default')
    expect(response.data.map((d) => d.index)).toEqual(TEXTS.map((_, i) => i))
    expect(response.data.map((d) => d.embedding)).toEqual(rows(expected.embeddings))
    expect(response.usage).toEqual({ prompt_tokens: expected.totalTokens, total_tokens: expected.totalTokens })
    expect(expected.totalTokens).toBeGreaterThan(TEXTS.length)
  })

  it('answers float calls, single strings and other models the same way', async () => {
    const float = await client.embeddings.create({ model: 'default', input: TEXTS, encoding_format: 'float' })
    // JSON numbers of float32 values read back to the same float32 values.
    expect(float.data.map((d) => Array.from(Float32Array.from(d.embedding)))).toEqual(rows(await pool.embed(TEXTS)))
    const single = await client.embeddings.create({ model: 'wide', input: 'a dog' })
    expect(single.data).toHaveLength(1)
    expect(single.data[0].embedding).toEqual(rows(await pool.embed(['a dog'], { model: 'wide' }))[0])
    expect(single.data[0].embedding).toHaveLength(48)
    expect(single.model).toBe('wide')
  })

  it('shortens to dimensions and renormalises', async () => {
    const response = await client.embeddings.create({ model: 'wide', input: ['a dog', 'a cat'], dimensions: 8 })
    const full = await pool.embed(['a dog', 'a cat'], { model: 'wide' })
    response.data.forEach(({ embedding }, i) => {
      expect(embedding).toHaveLength(8)
      expect(Math.hypot(...embedding)).toBeCloseTo(1, 5)
      const head = full[i].subarray(0, 8)
      const norm = Math.hypot(...head)
      embedding.forEach((x, j) => expect(x).toBeCloseTo(head[j] / norm, 6))
    })
    const error = await client.embeddings.create({ model: 'wide', input: 'x', dimensions: 49 }).catch((e) => e)
    expect(error).toBeInstanceOf(OpenAI.BadRequestError)
    expect(error.param).toBe('dimensions')
  })

  it('turns errors into the client typed errors', async () => {
    const unknown = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'x' }).catch((e) => e)
    expect(unknown).toBeInstanceOf(OpenAI.NotFoundError)
    expect(unknown.code).toBe('model_not_found')
    expect(unknown.message).toContain('default, wide')
    for (const body of [
      { input: [] },
      { input: [1, 2] },
      { input: 'x', colour: 'red' },
      { input: 'x', dimensions: 0 },
    ]) {
      const error = await client.embeddings.create({ model: 'default', ...body } as never).catch((e) => e)
      expect(error).toBeInstanceOf(OpenAI.BadRequestError)
      expect(error.type).toBe('invalid_request_error')
    }
    const wrongKey = new OpenAI({ apiKey: 'wrong', baseURL: `${base}/v1`, maxRetries: 0 })
    expect(await wrongKey.embeddings.create({ model: 'default', input: 'x' }).catch((e) => e)).toBeInstanceOf(
      OpenAI.AuthenticationError,
    )
    const tooMany = await client.embeddings.create({ model: 'default', input: Array(65).fill('x') }).catch((e) => e)
    expect(tooMany).toBeInstanceOf(OpenAI.APIError)
    expect(tooMany.status).toBe(413)
  })

  it('asks for the key on every route but /health', async () => {
    for (const path of ['/v1/embeddings', '/embeddings', '/embed']) {
      const response = await post(`${base}${path}`, { input: 'x' }, null)
      expect(response.status).toBe(401)
      expect(response.headers.get('www-authenticate')).toBe('Bearer')
    }
    for (const path of ['/v1/models', '/info', '/metrics']) expect((await get(`${base}${path}`, null)).status).toBe(401)
    expect((await get(`${base}/v1/models`, `${KEY}x`)).status).toBe(401)
    expect((await get(`${base}/health`, null)).status).toBe(200)
  })

  it('answers TEI /embed with what pool.embed gives', async () => {
    const response = await post(`${base}/embed`, { inputs: TEXTS })
    expect(response.status).toBe(200)
    const vectors = (await response.json()) as number[][]
    expect(vectors.map((v) => Array.from(Float32Array.from(v)))).toEqual(rows(await pool.embed(TEXTS)))
    const single = (await (await post(`${base}/embed`, { inputs: 'a dog', normalize: true })).json()) as number[][]
    expect(single).toHaveLength(1)
    const short = (await (await post(`${base}/embed`, { inputs: ['a dog'], dimensions: 4 })).json()) as number[][]
    expect(Math.hypot(...short[0])).toBeCloseTo(1, 5)
  })

  it('refuses malformed TEI requests with 422 in TEI shape', async () => {
    const bodies = [
      { inputs: 5 },
      { input: 'x' },
      { inputs: 'x', truncation_direction: 'Left' },
      '{"inputs":',
      // The pool's model normalizes: raw vectors cannot be given.
      { inputs: 'x', normalize: false },
    ]
    for (const body of bodies) {
      const response = await post(`${base}/embed`, body)
      expect(response.status, JSON.stringify(body)).toBe(422)
      const error = (await response.json()) as { error: string; error_type: string }
      expect(error.error_type).toBe('validation')
      expect(error.error.length).toBeGreaterThan(0)
    }
  })

  it('refuses bodies, item counts and texts beyond the limits with 413', async () => {
    const big = await post(`${base}/embed`, { inputs: ['x'.repeat(70 * 1024)] })
    expect(big.status).toBe(413)
    const items = await post(`${base}/embed`, { inputs: Array(65).fill('x') })
    expect(items.status).toBe(413)
    expect(((await items.json()) as { error: string }).error).toContain('at most 64')
    const long = await post(`${base}/v1/embeddings`, { input: ['ok', 'y'.repeat(2001)] })
    expect(long.status).toBe(413)
    const body = (await long.json()) as { error: { param: string; message: string } }
    expect(body.error.param).toBe('input')
    expect(body.error.message).toContain('input[1]')
  })

  it('serves /v1/models, /info, /health and /metrics', async () => {
    const models = (await (await get(`${base}/v1/models`)).json()) as { data: { id: string }[] }
    expect(models.data.map((m) => m.id)).toEqual(['default', 'wide'])
    const listed = await client.models.list()
    expect(listed.data.map((m) => m.id)).toEqual(['default', 'wide'])
    const info = (await (await get(`${base}/info`)).json()) as Record<string, unknown>
    expect(info).toMatchObject({
      model_id: 'default',
      max_input_length: pool.maxLength,
      max_client_batch_size: 64,
      dimension: pool.dimension,
    })
    expect(info.version).toMatch(/^\d+\.\d+\.\d+/)
    const health = await get(`${base}/health`, null)
    expect(health.status).toBe(200)
    expect(await health.json()).toEqual({ status: 'ok' })
    const metrics = await get(`${base}/metrics`)
    expect(metrics.headers.get('content-type')).toContain('text/plain; version=0.0.4')
    const text = await metrics.text()
    expect(text).toContain('inferpool_items_total{model="default"')
    expect(text).toMatch(/^process_cpu_user_seconds_total \d/m)
    expect(text).toMatch(/^process_resident_memory_bytes \d+/m)
    expect(text).toMatch(/^inferpool_http_requests_total\{route="\/v1\/embeddings",status="200"\} [1-9]/m)
  })
})

describe('the server under load and when closing', () => {
  // The default model on one worker with batches of one: a backlog keeps it busy.
  let pool: Pool
  let app: FastifyInstance
  let base: string
  let backlogs = 0
  const backlog = (n: number) => {
    backlogs++
    return Array.from({ length: n }, (_, i) => `backlog ${backlogs} text number ${i} of the queue`)
  }
  beforeAll(async () => {
    pool = await Pool.create({ cpuWorkers: 1, intraOpThreads: 1, maxBatchSize: 1, maxQueuedItems: 200 })
    app = await createServer(pool, { timeoutMs: 10_000 })
    base = await listen(app)
  })
  afterAll(async () => {
    await app?.close()
    await pool?.close()
  })

  it('answers 429 with Retry-After when the queue is full', async () => {
    const busy = pool.embed(backlog(200))
    try {
      // 50 texts do not fit while the backlog drains (a text takes a millisecond or more).
      const more = backlog(50)
      const response = await post(`${base}/v1/embeddings`, { input: more }, null)
      expect(response.status).toBe(429)
      expect(Number(response.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
      const client = new OpenAI({ apiKey: 'unused', baseURL: `${base}/v1`, maxRetries: 0 })
      const error = await client.embeddings.create({ model: 'default', input: more }).catch((e) => e)
      expect(error).toBeInstanceOf(OpenAI.RateLimitError)
      expect(error.code).toBe('overloaded')
      const tei = await post(`${base}/embed`, { inputs: more }, null)
      expect(tei.status).toBe(429)
      expect(((await tei.json()) as { error_type: string }).error_type).toBe('overloaded')
    } finally {
      await busy
    }
  })

  it('does not run the queued texts of a client that disconnects', async () => {
    const before = pool.status().items
    const busy = pool.embed(backlog(100))
    const texts = backlog(50)
    const request = httpRequest(`${base}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
    })
    request.on('error', () => {}) // the socket is destroyed below
    request.end(JSON.stringify({ input: texts }))
    const deadline = performance.now() + 5000
    while (pool.status().outstanding < 140 && performance.now() < deadline) await tick(2)
    expect(pool.status().outstanding).toBeGreaterThanOrEqual(140)
    request.destroy()
    await busy
    while (pool.status().outstanding > 0 && performance.now() < deadline) await tick(5)
    expect(pool.status().outstanding).toBe(0)
    // The backlog ran; of the 50 texts, at most the one running when the client left did.
    expect(pool.status().items - before).toBeLessThanOrEqual(101)
  })

  it('answers 504 when a request does not finish in time', async () => {
    // Bulk: a single text would otherwise be interactive and go first.
    const quick = await createServer(pool, { timeoutMs: 30, priority: 'bulk' })
    const busy = pool.embed(backlog(150))
    try {
      await tick(10)
      // Of the backlog's length: it queues behind it.
      const late = `backlog ${backlogs} text number 1 of the line`
      const response = await quick.inject({ method: 'POST', url: '/embed', payload: { inputs: [late] } })
      expect(response.statusCode).toBe(504)
      expect(response.json()).toMatchObject({ error_type: 'backend' })
    } finally {
      await quick.close()
      await busy
    }
  })

  it('answers 503 on /health and on embeddings once the pool is closed', async () => {
    const other = await Pool.create({ model: TINY_BERT, cpuWorkers: 1 })
    const server = await createServer(other)
    await other.close()
    const health = await server.inject({ method: 'GET', url: '/health' })
    expect(health.statusCode).toBe(503)
    expect(health.json()).toEqual({ status: 'unavailable', reason: 'the pool is closed' })
    const embed = await server.inject({ method: 'POST', url: '/v1/embeddings', payload: { input: 'x' } })
    expect(embed.statusCode).toBe(503)
    expect(embed.json().error.code).toBe('pool_closed')
    await server.close()
  })

  it('checks its options', async () => {
    for (const options of [{ apiKey: '' }, { maxItems: 0 }, { timeoutMs: -1 }, { priority: 'urgent' }, { port: 80 }]) {
      const error = await createServer(pool, options as object).catch((e) => e)
      expect(error.code).toBe('INVALID_INPUT')
    }
  })
})

const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe('errors as HTTP answers', () => {
  it('maps every pool error code to its status, in both shapes', () => {
    const cases: [PoolErrorCode, number, string][] = [
      ['INVALID_INPUT', 400, 'validation'],
      ['OVERLOADED', 429, 'overloaded'],
      ['TIMEOUT', 504, 'backend'],
      ['POOL_CLOSED', 503, 'unhealthy'],
      ['MODEL_UNAVAILABLE', 503, 'unhealthy'],
      ['INFERENCE_FAILED', 500, 'backend'],
      ['INTERNAL', 500, 'backend'],
    ]
    for (const [code, status, teiType] of cases) {
      const http = toHttpError(new PoolError(code, `${code} happened`), () => 7)
      expect(http.status).toBe(status)
      expect(http.retryAfter).toBe(code === 'OVERLOADED' ? 7 : undefined)
      expect(errorBody(http, 'openai')).toEqual({
        status,
        body: {
          error: {
            message: `${code} happened`,
            type: status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error',
            param: null,
            code: code.toLowerCase(),
          },
        },
      })
      expect(errorBody(http, 'tei')).toEqual({
        status: status === 400 ? 422 : status,
        body: { error: `${code} happened`, error_type: teiType },
      })
    }
    // An error that is not the pool's does not leak its message.
    expect(toHttpError(new Error('secret detail'), () => 1)).toMatchObject({
      status: 500,
      message: 'internal server error',
    })
  })
})
