// OpenAI's completions API over the pool's seq2seq models: `POST /v1/completions`, answered
// whole or as Server-Sent Events, one stream of deltas per prompt interleaved by index.

import { randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'

import { HttpError, type ServerSettings, TEXTS_SCHEMA, errorBody, texts, toHttpError } from './api.js'
import type { Pool } from './pool.js'
import type { FinishReason, GenerateDelta, GenerateOptions, Generated, Priority } from './types.js'

/** The body of `POST /v1/completions`, as OpenAI's API takes it (and three of vLLM's extensions). */
export interface CompletionRequest {
  prompt: string | string[]
  model?: string
  max_tokens?: number | null
  temperature?: number | null
  top_p?: number | null
  n?: number | null
  best_of?: number | null
  stream?: boolean | null
  stream_options?: { include_usage?: boolean } | null
  stop?: string | string[] | null
  seed?: number | null
  user?: string
  echo?: boolean | null
  suffix?: string | null
  logprobs?: number | null
  frequency_penalty?: number | null
  presence_penalty?: number | null
  logit_bias?: Record<string, number> | null
  /** vLLM's: sample among the `top_k` most likely tokens (0 or -1: all). */
  top_k?: number | null
  /** vLLM's: EOS cannot end a text before this many tokens. */
  min_tokens?: number | null
  /** vLLM's (Hugging Face's `repetition_penalty`). */
  repetition_penalty?: number | null
}

/** Most tokens one prompt may ask for (the pool's limit). */
const MAX_TOKENS = 1 << 20

const STOP_SCHEMA = {
  anyOf: [
    { type: 'string', minLength: 1 },
    { type: 'array', maxItems: 4, items: { type: 'string', minLength: 1 } },
    { type: 'null' },
  ],
}

/**
 * JSON schema of {@link CompletionRequest}: unknown keys are refused, as OpenAI's API does;
 * `null` stands for an absent value, as there.
 */
export const COMPLETIONS_SCHEMA = {
  type: 'object',
  required: ['prompt'],
  additionalProperties: false,
  properties: {
    prompt: TEXTS_SCHEMA,
    model: { type: 'string' },
    max_tokens: { type: ['integer', 'null'], minimum: 1, maximum: MAX_TOKENS },
    temperature: { type: ['number', 'null'], minimum: 0, maximum: 2 },
    top_p: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 1 },
    n: { type: ['integer', 'null'] },
    best_of: { type: ['integer', 'null'] },
    stream: { type: ['boolean', 'null'] },
    stream_options: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: { include_usage: { type: 'boolean' } },
    },
    stop: STOP_SCHEMA,
    seed: { type: ['integer', 'null'], minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
    user: { type: 'string' },
    echo: { type: ['boolean', 'null'] },
    suffix: { type: ['string', 'null'] },
    logprobs: { type: ['integer', 'null'] },
    frequency_penalty: { type: ['number', 'null'], minimum: -2, maximum: 2 },
    presence_penalty: { type: ['number', 'null'], minimum: -2, maximum: 2 },
    logit_bias: { type: ['object', 'null'], additionalProperties: { type: 'number' } },
    top_k: { type: ['integer', 'null'], minimum: -1 },
    min_tokens: { type: ['integer', 'null'], minimum: 0, maximum: MAX_TOKENS },
    repetition_penalty: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 100 },
  },
} as const

/** The decoding options of a completion request, without the model and the call's own. */
export type CompletionOptions = Pick<
  GenerateOptions,
  'maxNewTokens' | 'minNewTokens' | 'temperature' | 'topK' | 'topP' | 'seed' | 'stop' | 'repetitionPenalty'
>

/** Refuses a field this server cannot honour with 400, naming it. */
function unsupported(param: string, accepted: boolean, message: string): void {
  if (!accepted) throw new HttpError(400, message, { param, code: 'unsupported_value' })
}

/**
 * The pool's options for `body` (absent and `null` fields get the pool's defaults).
 *
 * @throws {HttpError} 400 for a value this server cannot honour (`n` or `best_of` other than 1,
 * `echo`, `suffix`, `logprobs`, penalties other than 0, a `logit_bias`, `stream_options`
 * without `stream`, `min_tokens` above `max_tokens`).
 */
export function completionOptions(body: CompletionRequest): CompletionOptions {
  unsupported('n', body.n == null || body.n === 1, `n must be 1: one completion per prompt, got ${body.n}`)
  unsupported('best_of', body.best_of == null || body.best_of === 1, `best_of must be 1, got ${body.best_of}`)
  unsupported('echo', body.echo !== true, 'echo: true is not supported: the prompt is not part of the output')
  unsupported('suffix', body.suffix == null, 'suffix is not supported')
  unsupported('logprobs', body.logprobs == null, 'logprobs are not supported')
  for (const param of ['frequency_penalty', 'presence_penalty'] as const) {
    unsupported(param, !body[param], `${param} is not supported (only 0); repetition_penalty is`)
  }
  unsupported(
    'logit_bias',
    body.logit_bias == null || Object.keys(body.logit_bias).length === 0,
    'logit_bias is not supported',
  )
  unsupported(
    'stream_options',
    body.stream_options == null || body.stream === true,
    'stream_options needs stream: true',
  )
  if (body.min_tokens != null && body.max_tokens != null && body.min_tokens > body.max_tokens) {
    throw new HttpError(400, `min_tokens (${body.min_tokens}) exceeds max_tokens (${body.max_tokens})`, {
      param: 'min_tokens',
    })
  }
  return {
    maxNewTokens: body.max_tokens ?? undefined,
    minNewTokens: body.min_tokens ?? undefined,
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    topK: body.top_k == null || body.top_k === -1 ? undefined : body.top_k,
    seed: body.seed ?? undefined,
    stop: body.stop ?? undefined,
    repetitionPenalty: body.repetition_penalty ?? undefined,
  }
}

/** OpenAI's `finish_reason`: `'stop'` for the model's end and for a stop sequence alike. */
export function finishReason(reason: FinishReason): 'stop' | 'length' {
  return reason === 'length' ? 'length' : 'stop'
}

/**
 * The usage of a completion: the prompts' tokens as the encoder was fed them (special tokens
 * included, after truncation) and the tokens generated.
 */
export function completionUsage(
  promptTokens: number,
  completionTokens: number,
): {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
} {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  }
}

/** What the route needs of the server. */
export interface CompletionContext {
  pool: Pool
  settings: ServerSettings
  /** The pool model a request names: 404 for one the pool does not have. */
  model(name: string): string
  /** The queue class of a request of `count` prompts. */
  priority(count: number): Priority
  /** A signal that aborts when the client disconnects before its answer has been sent. */
  disconnected(reply: FastifyReply): AbortSignal
}

/** One `data:` event of a Server-Sent Events stream. */
const event = (data: unknown): string => `data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`

/** Adds `POST /v1/completions` to `app`. */
export function addCompletions(app: FastifyInstance, context: CompletionContext): void {
  const { pool, settings } = context
  // Kinds do not change while the pool lives.
  const kinds = new Map(Object.entries(pool.status().models).map(([name, m]) => [name, m.kind]))
  const seq2seq = [...kinds].flatMap(([name, kind]) => (kind === 'seq2seq' ? [name] : []))

  /** The seq2seq model a request names, or the one it gets without naming one. */
  const model = (name: string | undefined): string => {
    if (name === undefined) {
      if (kinds.get(pool.defaultModel) === 'seq2seq') return pool.defaultModel
      if (seq2seq.length === 1) return seq2seq[0]
      throw new HttpError(
        400,
        seq2seq.length === 0
          ? 'this server has no seq2seq model: /v1/completions needs one'
          : `name the model: this server has several seq2seq models (${seq2seq.join(', ')})`,
        { param: 'model', code: 'model_not_supported' },
      )
    }
    const found = context.model(name)
    if (kinds.get(found) !== 'seq2seq') {
      throw new HttpError(
        400,
        `the model ${JSON.stringify(found)} is an embedding model: it cannot complete text (use /v1/embeddings)`,
        { param: 'model', code: 'model_not_supported' },
      )
    }
    return found
  }

  app.post(
    '/v1/completions',
    { schema: { body: COMPLETIONS_SCHEMA } },
    async (request: FastifyRequest<{ Body: CompletionRequest }>, reply: FastifyReply) => {
      const body = request.body
      const name = model(body.model)
      const decoding = completionOptions(body)
      const prompts = texts(body.prompt, 'prompt', settings)
      const options: Omit<GenerateOptions, 'onProgress'> = {
        ...decoding,
        model: name,
        priority: context.priority(prompts.length),
        // A client that disconnects cancels its prompts: they leave the decoder at the next step.
        signal: context.disconnected(reply),
        timeoutMs: settings.timeoutMs,
      }
      const head = {
        id: `cmpl-${randomUUID().replaceAll('-', '')}`,
        object: 'text_completion',
        created: now(),
        model: name,
      }
      if (body.stream !== true) {
        const results = await pool.generate(prompts, options)
        return {
          ...head,
          choices: results.map((result, index) => ({
            index,
            text: result.text,
            finish_reason: finishReason(result.finishReason),
            logprobs: null,
          })),
          usage: completionUsage(
            results.reduce((sum: number, r: Generated) => sum + r.promptTokens, 0),
            results.reduce((sum: number, r: Generated) => sum + r.tokens.length, 0),
          ),
        }
      }
      return stream(reply, pool, prompts, options, head, body.stream_options?.include_usage === true)
    },
  )
}

/** Seconds since the Unix epoch. */
const now = () => Math.floor(Date.now() / 1000)

/** What every chunk of one answer shares. */
interface Head {
  id: string
  object: string
  created: number
  model: string
}

/**
 * Answers with Server-Sent Events: a chunk per delta of each prompt (by `index`, interleaved as
 * they come), the last of each prompt with its `finish_reason`, the usage when asked for, then
 * `[DONE]`. Every prompt's first delta is awaited before answering, so a refusal (429, 503, a
 * bad option) is still an HTTP status; a failure after that (a timeout) is sent as an
 * `{ error }` event that ends the stream.
 */
async function stream(
  reply: FastifyReply,
  pool: Pool,
  prompts: string[],
  options: Omit<GenerateOptions, 'onProgress'>,
  head: Head,
  includeUsage: boolean,
): Promise<FastifyReply> {
  // Ends every prompt still decoding once the answer ends (or a prompt failed).
  const controller = new AbortController()
  const signal = AbortSignal.any([controller.signal, ...(options.signal === undefined ? [] : [options.signal])])
  const streams = prompts.map((prompt) => pool.generateStream(prompt, { ...options, signal }))
  const firsts = await Promise.allSettled(streams.map((s) => s.next()))
  const refused = firsts.find((first) => first.status === 'rejected')
  if (refused !== undefined) {
    controller.abort()
    await Promise.allSettled(streams.map((s) => s.return()))
    throw refused.reason
  }
  const first = firsts.map((f) => (f as PromiseFulfilledResult<IteratorResult<GenerateDelta, void>>).value)
  reply
    .header('content-type', 'text/event-stream; charset=utf-8')
    .header('cache-control', 'no-cache')
    .header('x-accel-buffering', 'no')
  return reply.send(Readable.from(events(streams, first, head, includeUsage, controller), { objectMode: false }))
}

/** The events of {@link stream}; leaving it early (the client is gone) cancels what still runs. */
async function* events(
  streams: AsyncGenerator<GenerateDelta, void, undefined>[],
  firsts: IteratorResult<GenerateDelta, void>[],
  head: Head,
  includeUsage: boolean,
  controller: AbortController,
): AsyncGenerator<string, void, undefined> {
  const queue: string[] = []
  let wake: (() => void) | undefined
  let live = streams.length
  let failure: { error: unknown } | undefined
  let tokens = 0
  let promptTokens = 0
  const pump = async (index: number, first: IteratorResult<GenerateDelta, void>) => {
    try {
      for (let item = first; item.done !== true; item = await streams[index].next()) {
        const delta = item.value
        if (delta.token !== null) tokens++
        promptTokens += delta.promptTokens ?? 0
        const reason = delta.finishReason === null ? null : finishReason(delta.finishReason)
        queue.push(event({ ...head, choices: [{ index, text: delta.text, finish_reason: reason, logprobs: null }] }))
        wake?.()
      }
    } catch (error) {
      failure ??= { error }
    } finally {
      live--
      wake?.()
    }
  }
  const pumps = firsts.map((first, index) => pump(index, first))
  try {
    for (;;) {
      if (queue.length > 0) {
        yield queue.splice(0).join('')
        continue
      }
      if (failure !== undefined) {
        yield event(
          errorBody(
            toHttpError(failure.error, () => 1),
            'openai',
          ).body,
        )
        return
      }
      if (live === 0) break
      await new Promise<void>((resolve) => {
        wake = resolve
      })
      wake = undefined
    }
    if (includeUsage) yield event({ ...head, choices: [], usage: completionUsage(promptTokens, tokens) })
    yield event('[DONE]')
  } finally {
    controller.abort()
    await Promise.allSettled(pumps)
  }
}
