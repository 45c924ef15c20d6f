// The server: OpenAI's `/v1/embeddings` and TEI's `/embed` over one pool, OpenAI's
// `/v1/completions` over its seq2seq models (completions.ts), with `/v1/models`, `/info`,
// `/health` and `/metrics`, on fastify. fastify is imported here, when a
// server is created, so that a program that only uses the pool never loads it.

import { createHash, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'

import {
  type Dialect,
  HttpError,
  OPENAI_SCHEMA,
  type OpenAIRequest,
  type ServerOptions,
  TEI_SCHEMA,
  type TeiRequest,
  base64,
  checkTeiOptions,
  errorBody,
  isUnit,
  serverSettings,
  shorten,
  texts,
  toHttpError,
  unit,
} from './api.js'
import { addCompletions } from './completions.js'
import { PoolError } from './errors.js'
import { type Family, exposition } from './metrics.js'
import type { Pool } from './pool.js'
import type { Priority } from './types.js'

export type { ServerOptions } from './api.js'

/** Routes that answer without the API key (load balancers probe them). */
const OPEN_ROUTES: ReadonlySet<string> = new Set(['/health'])

/** Content type of the Prometheus text format. */
const PROMETHEUS = 'text/plain; version=0.0.4; charset=utf-8'

/** The fastify versions the server is written for (the optional peer dependency's range). */
const FASTIFY_RANGE = '^5.12.8'

/** fastify, an optional peer dependency: only the server needs it. */
async function loadFastify(): Promise<typeof import('fastify').default> {
  try {
    return (await import('fastify')).default
  } catch (error) {
    const code = (error as { code?: string }).code
    if ((code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && /fastify/.test(String(error))) {
      throw new PoolError(
        'INVALID_INPUT',
        `the HTTP server needs fastify, an optional peer dependency of inferpool: npm install fastify@${FASTIFY_RANGE}`,
        { cause: error },
      )
    }
    throw error
  }
}

/**
 * A fastify server for `pool` (not listening yet: `await server.listen({ port })`, which binds
 * the loopback interface unless given a `host`). Closing the server leaves the pool open.
 *
 * - `POST /v1/embeddings`, `POST /embeddings`: OpenAI's embeddings API (`input`, `model` by
 *   pool model name, `encoding_format` `float` or `base64`, `dimensions`, `usage`).
 * - `POST /embed`: text-embeddings-inference's (`inputs`, `normalize`, `dimensions`).
 * - `POST /v1/completions`: OpenAI's completions API over the pool's seq2seq models (`prompt`,
 *   `max_tokens`, `temperature`, `top_p`, `stop`, `seed`, `stream` as Server-Sent Events).
 * - `GET /v1/models`, `GET /info`, `GET /health` (503 while closing or when no worker can
 *   serve), `GET /metrics` (the pool's and the process's, Prometheus text format).
 *
 * A client that disconnects cancels its texts that have not started, and its prompts decoding.
 *
 * @throws {PoolError} `INVALID_INPUT` for malformed options.
 */
export async function createServer(pool: Pool, options: ServerOptions = {}): Promise<FastifyInstance> {
  const settings = serverSettings(options)
  const fastify = await loadFastify()
  const app = fastify({
    bodyLimit: settings.maxBodyBytes,
    logger: settings.logger,
    // The request body must arrive within the request's own time.
    requestTimeout: settings.timeoutMs,
    // Closing ends idle keep-alive connections, and waits for requests being answered.
    forceCloseConnections: 'idle',
    // Refuse unknown keys (instead of dropping them), and take values as sent.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  })
  const counters = new RequestCounters()
  const eventLoop = monitorEventLoopDelay({ resolution: 10 })
  eventLoop.enable()
  let closing = false
  app.addHook('preClose', async () => {
    closing = true
  })
  // While closing, a keep-alive connection ends with the answer it is waiting for, instead of
  // holding the close open until it times out.
  app.addHook('onSend', async (_request, reply) => {
    if (closing) reply.header('connection', 'close')
  })
  app.addHook('onClose', async () => eventLoop.disable())

  const key = settings.apiKey === undefined ? undefined : digest(settings.apiKey)
  app.addHook('onRequest', async (request, reply) => {
    if (key === undefined || OPEN_ROUTES.has(request.routeOptions.url ?? '')) return
    const match = /^Bearer (.+)$/i.exec(request.headers.authorization ?? '')
    // Digests of equal length, compared in constant time: neither the key nor its length leaks.
    if (match !== null && timingSafeEqual(digest(match[1]), key)) return
    reply.header('www-authenticate', 'Bearer')
    throw new HttpError(401, 'a valid API key is needed: Authorization: Bearer <key>', {
      code: 'invalid_api_key',
    })
  })
  app.addHook('onResponse', async (request, reply) => {
    counters.add(request.routeOptions.url ?? 'unmatched', reply.statusCode)
  })

  /** OpenAI's routes answer errors in its shape, the others in TEI's. */
  const dialect = (request: FastifyRequest): Dialect => {
    const url = request.routeOptions.url ?? request.url
    return url.startsWith('/v1/') || url === '/embeddings' ? 'openai' : 'tei'
  }
  app.setErrorHandler(async (error, request, reply) => {
    const http = toHttpError(error, () => retryAfter(pool))
    if (http.status >= 500) request.log.error(error)
    if (http.retryAfter !== undefined) reply.header('retry-after', String(http.retryAfter))
    const { status, body } = errorBody(http, dialect(request))
    return reply.code(status).send(body)
  })
  app.setNotFoundHandler(async (request) => {
    throw new HttpError(404, `no route ${request.method} ${request.url}`, { code: 'not_found' })
  })

  /** The pool model a request names (the default model when it names none). */
  const model = (name: string | undefined): string => {
    if (name === undefined) return pool.defaultModel
    if (pool.models.includes(name)) return name
    throw new HttpError(
      404,
      `the model ${JSON.stringify(name)} does not exist; this server has ${pool.models.join(', ')}`,
      {
        param: 'model',
        code: 'model_not_found',
      },
    )
  }
  const priority = (count: number): Priority =>
    settings.priority === 'auto' ? (count === 1 ? 'interactive' : 'bulk') : settings.priority
  const embed = (reply: FastifyReply, list: string[], name: string) =>
    pool.embedWithUsage(list, {
      model: name,
      priority: priority(list.length),
      // A client that disconnects cancels its texts that have not started.
      signal: disconnected(reply),
      timeoutMs: settings.timeoutMs,
    })

  const openai = async (request: FastifyRequest<{ Body: OpenAIRequest }>, reply: FastifyReply) => {
    const body = request.body
    const name = model(body.model)
    const result = await embed(reply, texts(body.input, 'input', settings), name)
    const encode = body.encoding_format === 'base64' ? base64 : (row: Float32Array) => Array.from(row)
    return {
      object: 'list',
      data: result.embeddings.map((row, index) => ({
        object: 'embedding',
        index,
        embedding: encode(shorten(row, body.dimensions)),
      })),
      model: name,
      usage: { prompt_tokens: result.totalTokens, total_tokens: result.totalTokens },
    }
  }
  app.post('/v1/embeddings', { schema: { body: OPENAI_SCHEMA } }, openai)
  app.post('/embeddings', { schema: { body: OPENAI_SCHEMA } }, openai)

  const tei = async (request: FastifyRequest<{ Body: TeiRequest }>, reply: FastifyReply) => {
    const body = request.body
    checkTeiOptions(body)
    if (body.normalize === false && pool.status().models[pool.defaultModel].normalize) {
      // Its vectors are scaled to unit length inside the pool: the raw ones are not there to give.
      throw new HttpError(
        422,
        `normalize: false is not supported: the model "${pool.defaultModel}" normalizes its vectors (create the pool with normalize: false for raw ones)`,
        { param: 'normalize' },
      )
    }
    const result = await embed(reply, texts(body.inputs, 'inputs', settings), pool.defaultModel)
    return result.embeddings.map((full) => {
      const row = shorten(full, body.dimensions)
      // TEI normalises by default; a pool model that does not is normalised here.
      return Array.from(body.normalize !== false && !isUnit(row) ? unit(row) : row)
    })
  }
  app.post('/embed', { schema: { body: TEI_SCHEMA } }, tei)

  addCompletions(app, { pool, settings, model, priority, disconnected })

  const started = Math.floor(Date.now() / 1000)
  app.get('/v1/models', async () => ({
    object: 'list',
    data: pool.models.map((id) => ({ id, object: 'model', created: started, owned_by: 'inferpool' })),
  }))

  app.get('/info', async () => {
    const status = pool.status()
    return {
      model_id: pool.defaultModel,
      model_dtype: 'float32',
      model_type: { embedding: {} },
      dimension: pool.dimension,
      max_input_length: pool.maxLength,
      max_client_batch_size: settings.maxItems,
      max_text_length: settings.maxTextLength,
      max_body_bytes: settings.maxBodyBytes,
      auto_truncate: true,
      workers: status.workers.length,
      models: Object.entries(status.models).map(([name, m]) => ({
        name,
        kind: m.kind,
        dimension: m.dimension,
        max_input_length: m.maxLength,
      })),
      version: version(),
    }
  })

  app.get('/health', async (_request, reply: FastifyReply) => {
    const problem = unhealthy(pool, closing)
    if (problem !== undefined) return reply.code(503).send({ status: 'unavailable', reason: problem })
    return { status: 'ok' }
  })

  app.get('/metrics', async (_request, reply: FastifyReply) => {
    reply.type(PROMETHEUS)
    return pool.metrics() + exposition([...processFamilies(eventLoop), counters.family()])
  })
  return app
}

/**
 * A signal that aborts when the connection closes before the reply has been sent. (A request's
 * own `close` event comes as soon as its body has been read, so it cannot tell.)
 */
function disconnected(reply: FastifyReply): AbortSignal {
  const controller = new AbortController()
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) controller.abort(new Error('the client disconnected'))
  })
  return controller.signal
}

/** Why the server cannot serve now, or undefined when it can. */
function unhealthy(pool: Pool, closing: boolean): string | undefined {
  if (closing) return 'the server is closing'
  if (pool.closed) return 'the pool is closed'
  const serving = pool.status().workers.some((w) => w.state !== 'failed' && w.state !== 'stopped')
  return serving ? undefined : 'no worker can serve'
}

/** Seconds until the queued texts are done at the pool's recent rate (1 to 60). */
function retryAfter(pool: Pool): number {
  const { queued, workers } = pool.status()
  const rate = workers.reduce((sum, w) => sum + w.itemsPerSecond, 0)
  return Math.min(60, Math.max(1, Math.ceil(rate > 0 ? queued / rate : 1)))
}

/** A fixed-length digest of `text`, for comparing secrets in constant time. */
function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest()
}

let packageVersion: string | undefined
/** inferpool's version, from its package.json. */
function version(): string {
  packageVersion ??= (
    JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  ).version
  return packageVersion
}

/** Requests answered, by route and status. */
class RequestCounters {
  readonly #counts = new Map<string, { route: string; status: string; count: number }>()

  add(route: string, status: number): void {
    const key = `${route} ${status}`
    const entry = this.#counts.get(key)
    if (entry === undefined) this.#counts.set(key, { route, status: String(status), count: 1 })
    else entry.count++
  }

  family(): Family {
    return {
      name: 'inferpool_http_requests_total',
      help: 'HTTP requests answered, by route and status.',
      type: 'counter',
      samples: [...this.#counts.values()].map(({ route, status, count }) => ({
        labels: { route, status },
        value: count,
      })),
    }
  }
}

/** The process's CPU, memory and event-loop metrics, named as prom-client names them. */
function processFamilies(eventLoop: ReturnType<typeof monitorEventLoopDelay>): Family[] {
  const cpu = process.cpuUsage()
  const memory = process.memoryUsage()
  const one = (value: number) => [{ labels: {}, value }]
  return [
    {
      name: 'process_cpu_user_seconds_total',
      help: 'User CPU time spent in seconds.',
      type: 'counter',
      samples: one(cpu.user / 1e6),
    },
    {
      name: 'process_cpu_system_seconds_total',
      help: 'System CPU time spent in seconds.',
      type: 'counter',
      samples: one(cpu.system / 1e6),
    },
    {
      name: 'process_start_time_seconds',
      help: 'Start time of the process since the Unix epoch in seconds.',
      type: 'gauge',
      samples: one(Math.round(Date.now() / 1000 - process.uptime())),
    },
    {
      name: 'process_resident_memory_bytes',
      help: 'Resident memory size in bytes.',
      type: 'gauge',
      samples: one(memory.rss),
    },
    {
      name: 'nodejs_heap_size_used_bytes',
      help: 'Process heap size used from Node.js in bytes.',
      type: 'gauge',
      samples: one(memory.heapUsed),
    },
    {
      name: 'nodejs_external_memory_bytes',
      help: 'Node.js external memory size in bytes.',
      type: 'gauge',
      samples: one(memory.external),
    },
    {
      name: 'nodejs_eventloop_lag_p99_seconds',
      help: 'The 99th percentile of the event loop delay, in seconds.',
      type: 'gauge',
      samples: one(eventLoop.percentile(99) / 1e9),
    },
  ]
}
