/**
 * OpenAI's `/v1/completions` over the tiny T5: whole answers equal to the independent reference
 * decoder, refusals in OpenAI's error shape, Server-Sent Events (through fetch and through the
 * openai client) that add up to the whole answer, a disconnect that frees the decoder rows, and
 * the request's timeout.
 */
import { once } from 'node:events'
import { type IncomingMessage, request as httpRequest } from 'node:http'
import { mkdtempSync, rmSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import type { FastifyInstance } from 'fastify'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool } from '../src/index.js'
import { createServer } from '../src/server.js'
import { type Generation, PROMPTS, createGenerationReference } from './fixtures/t5-reference.js'
import { writeTinyT5 } from './fixtures/tiny-t5.js'
import { TINY_BERT, until } from './helpers.js'

const MAX_TOKENS = 24
const root = mkdtempSync(join(tmpdir(), 'inferpool-completions-'))
const T5 = join(root, 't5')
const ENDLESS = join(root, 'endless')

/** Listens on a free loopback port; resolves with the base URL. */
async function listen(app: FastifyInstance): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

const post = (url: string, body: unknown) =>
  fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })

/** The `data:` payloads of a Server-Sent Events body, in order. */
function dataOf(body: string): string[] {
  return body
    .split('\n\n')
    .filter((block) => block.length > 0)
    .map((block) => {
      expect(block.startsWith('data: ')).toBe(true)
      return block.slice('data: '.length)
    })
}

interface Chunk {
  id: string
  object: string
  model: string
  choices: { index: number; text: string; finish_reason: string | null; logprobs: null }[]
  usage?: { completion_tokens: number }
}

const openaiReason = (reason: string) => (reason === 'length' ? 'length' : 'stop')

describe('/v1/completions', () => {
  let pool: Pool
  let app: FastifyInstance
  let base: string
  const expected = new Map<string, Generation>()
  /** Each prompt's token count as the reference tokenizes it. */
  const promptTokens = new Map<string, number>()

  beforeAll(async () => {
    writeTinyT5(T5, { layout: 'merged' })
    // Never chooses EOS: every prompt runs to its limit.
    writeTinyT5(ENDLESS, { layout: 'merged', noEos: true })
    const reference = await createGenerationReference(T5)
    try {
      for (const prompt of PROMPTS.slice(0, 12)) {
        expected.set(prompt, await reference.generate(prompt, { maxNewTokens: MAX_TOKENS }))
        promptTokens.set(prompt, reference.encode(prompt).length)
      }
    } finally {
      await reference.release()
    }
    pool = await Pool.create({
      models: { embed: TINY_BERT, t5: { path: T5 }, endless: { path: ENDLESS } },
      cpuWorkers: 1,
    })
    app = await createServer(pool, { maxItems: 16 })
    base = await listen(app)
  }, 60_000)
  afterAll(async () => {
    await app?.close()
    await pool?.close()
    rmSync(root, { recursive: true, force: true })
  })

  const complete = (payload: object) => app.inject({ method: 'POST', url: '/v1/completions', payload })

  it('answers several prompts as the reference decoder does, in OpenAI shape', async () => {
    const prompts = PROMPTS.slice(0, 12)
    const response = await complete({ model: 't5', prompt: prompts, max_tokens: MAX_TOKENS, user: 'u' })
    expect(response.statusCode).toBe(200)
    const body = response.json()
    expect(body.id).toMatch(/^cmpl-[0-9a-f]{32}$/)
    expect(body).toMatchObject({ object: 'text_completion', model: 't5' })
    expect(Math.abs(body.created - Date.now() / 1000)).toBeLessThan(60)
    expect(body.choices).toEqual(
      prompts.map((prompt, index) => ({
        index,
        text: expected.get(prompt)!.text,
        finish_reason: openaiReason(expected.get(prompt)!.finishReason),
        logprobs: null,
      })),
    )
    // Both endings are among them.
    expect(new Set(body.choices.map((c: { finish_reason: string }) => c.finish_reason))).toEqual(
      new Set(['stop', 'length']),
    )
    const tokens = prompts.reduce((sum, p) => sum + expected.get(p)!.tokens.length, 0)
    const fed = prompts.reduce((sum, p) => sum + promptTokens.get(p)!, 0)
    expect(body.usage).toEqual({ prompt_tokens: fed, completion_tokens: tokens, total_tokens: fed + tokens })
  })

  it('ends at a stop sequence with finish_reason stop, and takes nulls as absent values', async () => {
    const prompt = PROMPTS[4]
    const full = expected.get(prompt)!
    expect(full.finishReason).toBe('length')
    const stop = full.text.trim().slice(4, 7)
    const response = await complete({ model: 't5', prompt, max_tokens: MAX_TOKENS, stop, n: 1, seed: null })
    expect(response.statusCode).toBe(200)
    expect(response.json().choices).toEqual([
      { index: 0, text: full.text.slice(0, full.text.indexOf(stop)), finish_reason: 'stop', logprobs: null },
    ])
  })

  it('refuses what it cannot do, in OpenAI error shape', async () => {
    const cases: [object, number, string | null][] = [
      [{ model: 'embed', prompt: 'x' }, 400, 'model'],
      // The pool has two seq2seq models and an embedding default: a request must name one.
      [{ prompt: 'x' }, 400, 'model'],
      [{ model: 't5', prompt: 'x', n: 2 }, 400, 'n'],
      [{ model: 't5', prompt: 'x', echo: true }, 400, 'echo'],
      [{ model: 't5', prompt: 'x', logprobs: 1 }, 400, 'logprobs'],
      [{ model: 't5', prompt: 'x', frequency_penalty: 0.5 }, 400, 'frequency_penalty'],
      [{ model: 't5', prompt: 'x', stream_options: { include_usage: true } }, 400, 'stream_options'],
      [{ model: 't5', prompt: 'x', min_tokens: 5, max_tokens: 2 }, 400, 'min_tokens'],
      [{ model: 't5', prompt: 'x', colour: 'red' }, 400, null],
      [{ model: 't5', prompt: [1, 2] }, 400, null],
      [{ model: 't5', prompt: [] }, 400, null],
      [{ model: 't5', prompt: 'x', temperature: 3 }, 400, null],
      [{ model: 't5', prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }, 400, null],
      [{ model: 't5', prompt: 'x', max_tokens: 0 }, 400, null],
      [{ model: 't5', prompt: Array(17).fill('x') }, 413, 'prompt'],
    ]
    for (const [payload, status, param] of cases) {
      const response = await complete(payload)
      expect(response.statusCode, JSON.stringify(payload)).toBe(status)
      const { error } = response.json()
      expect(error.type).toBe('invalid_request_error')
      expect(error.param).toBe(param)
      expect(error.message.length).toBeGreaterThan(0)
    }
    const unknown = await complete({ model: 'gpt-3.5-turbo-instruct', prompt: 'x' })
    expect(unknown.statusCode).toBe(404)
    expect(unknown.json().error).toMatchObject({ code: 'model_not_found', param: 'model' })
    expect((await complete({ model: 'embed', prompt: 'x' })).json().error.message).toContain('embedding model')
  })

  it('lists each model kind in /info', async () => {
    const info = (await app.inject({ method: 'GET', url: '/info' })).json()
    expect(info.models.map((m: { name: string; kind: string }) => [m.name, m.kind])).toEqual([
      ['embed', 'embedding'],
      ['t5', 'seq2seq'],
      ['endless', 'seq2seq'],
    ])
  })

  it('streams Server-Sent Events that add up to the whole answer, then [DONE]', async () => {
    const prompts = PROMPTS.slice(0, 6)
    const response = await post(`${base}/v1/completions`, {
      model: 't5',
      prompt: prompts,
      max_tokens: MAX_TOKENS,
      stream: true,
      stream_options: { include_usage: true },
    })
    expect(response.status).toBe(200)
    expect(response.headers.get('content-type')).toBe('text/event-stream; charset=utf-8')
    const data = dataOf(await response.text())
    expect(data.at(-1)).toBe('[DONE]')
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d) as Chunk)
    const usage = chunks.pop()!
    expect(usage.choices).toEqual([])
    const ids = new Set(chunks.map((c) => c.id))
    expect(ids.size).toBe(1)
    expect(usage.id).toBe([...ids][0])
    let tokens = 0
    prompts.forEach((prompt, index) => {
      const mine = chunks.filter((c) => c.choices[0].index === index).map((c) => c.choices[0])
      const want = expected.get(prompt)!
      expect(mine.map((c) => c.text).join(''), prompt).toBe(want.text)
      // One chunk per token, then the finish.
      expect(mine).toHaveLength(want.tokens.length + 1)
      expect(mine.slice(0, -1).every((c) => c.finish_reason === null)).toBe(true)
      expect(mine.at(-1)!.finish_reason).toBe(openaiReason(want.finishReason))
      tokens += want.tokens.length
    })
    for (const chunk of chunks) expect(chunk).toMatchObject({ object: 'text_completion', model: 't5' })
    const fed = prompts.reduce((sum, p) => sum + promptTokens.get(p)!, 0)
    expect(usage.usage).toEqual({ prompt_tokens: fed, completion_tokens: tokens, total_tokens: fed + tokens })
  })

  it('speaks to the openai client, whole and streamed', async () => {
    const client = new OpenAI({ apiKey: 'unused', baseURL: `${base}/v1`, maxRetries: 0 })
    const prompt = PROMPTS[7]
    const whole = await client.completions.create({ model: 't5', prompt, max_tokens: MAX_TOKENS })
    expect(whole.choices[0].text).toBe(expected.get(prompt)!.text)
    let text = ''
    let finish: string | null = null
    for await (const chunk of await client.completions.create({
      model: 't5',
      prompt,
      max_tokens: MAX_TOKENS,
      stream: true,
    })) {
      text += chunk.choices[0].text
      finish = chunk.choices[0].finish_reason
    }
    expect(text).toBe(whole.choices[0].text)
    expect(finish).toBe(whole.choices[0].finish_reason)
    const error = await client.completions.create({ model: 'embed', prompt }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(OpenAI.BadRequestError)
  })

  const rows = () => pool.status().models.endless.generation!.rows

  it('frees the rows of a client that disconnects, streaming or not', async () => {
    // Through node:http rather than fetch: an aborted fetch leaves undici opening a spare
    // connection that holds the server's close open until it times out.
    const open = (body: object) => {
      const request = httpRequest(`${base}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
      })
      request.on('error', () => {}) // the socket is destroyed below
      request.end(JSON.stringify(body))
      return request
    }
    const streaming = open({ model: 'endless', prompt: [PROMPTS[1], PROMPTS[2]], max_tokens: 1_000_000, stream: true })
    const [response] = (await once(streaming, 'response')) as [IncomingMessage]
    expect(response.headers['content-type']).toBe('text/event-stream; charset=utf-8')
    const [chunk] = (await once(response, 'data')) as [Buffer]
    expect(chunk.toString()).toMatch(/^data: \{/)
    expect(rows()).toBe(2)
    streaming.destroy()
    await until('the streamed rows left', () => rows() === 0)

    const whole = open({ model: 'endless', prompt: PROMPTS[3], max_tokens: 1_000_000 })
    await until('the row decodes', () => rows() === 1)
    whole.destroy()
    await until('the row left', () => rows() === 0)
    expect(pool.status().outstanding).toBe(0)
  })

  it('answers 504 past the timeout, and ends a stream with an error event', async () => {
    const quick = await createServer(pool, { timeoutMs: 300 })
    try {
      const whole = await quick.inject({
        method: 'POST',
        url: '/v1/completions',
        payload: { model: 'endless', prompt: 'x', max_tokens: 1_000_000 },
      })
      expect(whole.statusCode).toBe(504)
      expect(whole.json().error.code).toBe('timeout')
      const streamed = await quick.inject({
        method: 'POST',
        url: '/v1/completions',
        payload: { model: 'endless', prompt: 'x', max_tokens: 1_000_000, stream: true },
      })
      expect(streamed.statusCode).toBe(200)
      const data = dataOf(streamed.body)
      expect(data.length).toBeGreaterThan(2)
      expect(JSON.parse(data.at(-1)!).error).toMatchObject({ code: 'timeout', type: 'server_error' })
      expect(data).not.toContain('[DONE]')
    } finally {
      await quick.close()
    }
    await until('the timed-out rows left', () => rows() === 0)
  })
})

describe('/v1/completions without naming the model', () => {
  it("uses the pool's only seq2seq model", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'inferpool-completions-default-'))
    writeTinyT5(dir, { layout: 'pair' })
    const pool = await Pool.create({ models: { embed: TINY_BERT, t5: { path: dir } }, cpuWorkers: 1 })
    const app = await createServer(pool)
    try {
      const response = await app.inject({
        method: 'POST',
        url: '/v1/completions',
        payload: { prompt: 'hello', max_tokens: 4 },
      })
      expect(response.statusCode).toBe(200)
      expect(response.json().model).toBe('t5')
      expect(response.json().choices[0].text).toBe((await pool.generate(['hello'], { maxNewTokens: 4 }))[0].text)
    } finally {
      await app.close()
      await pool.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
