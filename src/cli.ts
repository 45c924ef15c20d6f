#!/usr/bin/env node
import { createWriteStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { once } from 'node:events'
import type { Writable } from 'node:stream'
import { text as readAll } from 'node:stream/consumers'

import { Command, InvalidArgumentError } from 'commander'
import type { FastifyInstance } from 'fastify'

import type * as Scaleout from './bullmq/index.js'
import { chunkText } from './chunk.js'
import { progressBar } from './cli-progress.js'
import { MAX_NEW_TOKENS, decimal, generateCommand, integerIn, stopText } from './cli-generate.js'
import { PoolError } from './errors.js'
import { Pool } from './pool.js'
import type { ModelSpec } from './types.js'

function positive(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer')
  return n
}

function nonNegative(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a non-negative integer')
  return n
}

interface EmbedOptions {
  model: string
  out?: string
  devices: string
  maxChars: number
  cpuWorkers?: number
  progress: boolean
}

async function write(stream: Writable, data: string): Promise<void> {
  if (!stream.write(data)) await once(stream, 'drain')
}

async function embedCommand(files: string[], opts: EmbedOptions): Promise<void> {
  const items: { id: string; text: string }[] = []
  for (const file of files) {
    const content = file === '-' ? await readAll(process.stdin) : await readFile(file, 'utf8')
    const name = file === '-' ? 'stdin' : file
    chunkText(content, { maxChars: opts.maxChars }).forEach((text, i) => items.push({ id: `${name}#${i}`, text }))
  }

  const pool = await Pool.create({
    model: opts.model,
    devices: opts.devices.split(',').map((d) => d.trim()),
    cpuWorkers: opts.cpuWorkers,
  })
  const out: Writable = opts.out ? createWriteStream(opts.out) : process.stdout
  const started = performance.now()
  const bar = progressBar(opts.progress, 'embedding', 'chunks', items.length)
  try {
    // The stream keeps 512 texts in flight (batched across its calls) and yields in input order.
    let lines = ''
    for await (const { index, embedding } of pool.embedStream(
      items.map((item) => item.text),
      { highWaterMark: 512 },
    )) {
      const item = items[index]
      lines += `${JSON.stringify({ id: item.id, text: item.text, embedding: Array.from(embedding) })}\n`
      const done = index + 1
      if (done % 32 === 0 || done === items.length) {
        await write(out, lines)
        lines = ''
        bar.update(done)
      }
    }
  } finally {
    bar.stop()
    await pool.close()
    if (out !== process.stdout) {
      out.end()
      await once(out, 'finish')
    }
  }
  const seconds = (performance.now() - started) / 1000
  process.stderr.write(
    `embedded ${items.length} chunks in ${seconds.toFixed(2)} s (${(items.length / Math.max(seconds, 1e-3)).toFixed(1)} items/s)\n`,
  )
}

interface WorkerOptions {
  redis: string
  model: string[]
  devices: string
  cpuWorkers?: number
  concurrency?: number
  prefix?: string
  lockDuration?: number
  stalledInterval?: number
  maxWaitMs?: number
  maxQueuedItems?: number
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value]
}

/** `--model name=path` or `--model path` (named "default"), as `Pool.create`'s `models`. */
function namedModels(given: string[]): Record<string, string | ModelSpec> {
  const models: Record<string, string> = {}
  for (const entry of given.length === 0 ? ['default'] : given) {
    const eq = entry.indexOf('=')
    const [name, path] = eq > 0 ? [entry.slice(0, eq), entry.slice(eq + 1)] : ['default', entry]
    if (Object.hasOwn(models, name))
      throw new PoolError('INVALID_INPUT', `model ${JSON.stringify(name)} is named twice`)
    models[name] = path
  }
  return models
}

/**
 * `inferpool/bullmq`, loaded only by `worker`: it needs the optional peer dependencies bullmq and
 * ioredis. Loaded by URL, so that this entry's bundle keeps no static import of bullmq.
 */
async function loadScaleout(): Promise<typeof Scaleout> {
  try {
    return (await import(new URL('./bullmq.js', import.meta.url).href)) as typeof Scaleout
  } catch (error) {
    const missing = (error as { code?: string }).code === 'ERR_MODULE_NOT_FOUND'
    if (missing && /bullmq|ioredis/.test(String(error))) {
      throw new PoolError(
        'INVALID_INPUT',
        'inferpool worker needs the optional peer dependencies bullmq and ioredis: npm install bullmq@^6.7.0 ioredis@^5.11.1',
      )
    }
    throw error
  }
}

/** Serves the pool on Redis until SIGTERM or SIGINT, then finishes the active jobs and exits. */
async function workerCommand(opts: WorkerOptions): Promise<void> {
  const { serveQueue } = await loadScaleout()
  const pool = await Pool.create({
    models: namedModels(opts.model),
    devices: opts.devices === 'auto' ? 'auto' : opts.devices.split(',').map((d) => d.trim()),
    cpuWorkers: opts.cpuWorkers,
    maxWaitMs: opts.maxWaitMs,
    maxQueuedItems: opts.maxQueuedItems,
  })
  let server: Scaleout.QueueServer
  try {
    server = await serveQueue(pool, {
      connection: opts.redis,
      concurrency: opts.concurrency,
      prefix: opts.prefix,
      lockDurationMs: opts.lockDuration,
      stalledIntervalMs: opts.stalledInterval,
    })
  } catch (error) {
    await pool.close({ drain: false })
    throw error
  }
  const devices = pool.status().workers.map((w) => w.device)
  process.stderr.write(
    `inferpool worker ${server.name} ready: models ${server.models.join(', ')}; devices ${devices.join(', ')}\n`,
  )
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'))
    process.once('SIGINT', () => resolve('SIGINT'))
  })
  process.stderr.write(`inferpool worker ${server.name}: ${signal}, finishing the active jobs\n`)
  // A second signal does not wait.
  const force = () => process.exit(1)
  process.once('SIGTERM', force)
  process.once('SIGINT', force)
  await server.close()
  const workers = pool.status().workers
  await pool.close()
  const stats = server.stats()
  const batches = workers.reduce((sum, w) => sum + w.batches, 0)
  const items = workers.reduce((sum, w) => sum + w.items, 0)
  process.stderr.write(
    `inferpool worker ${server.name} stopped: ${stats.completed} jobs, ${stats.texts} texts, ` +
      `${stats.failed} failed attempts, ${stats.overloaded} put back when full, ` +
      `mean batch size ${batches === 0 ? 0 : (items / batches).toFixed(2)}\n`,
  )
}

interface ServeOptions {
  model: string[]
  defaultModel?: string
  host: string
  port: number
  devices: string
  cpuWorkers?: number
  maxQueuedItems?: number
  cache?: number
  maxItems?: number
  maxTextLength?: number
  maxBodyBytes?: number
  timeoutMs?: number
  drainTimeoutMs: number
  log: boolean
}

function port(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('expected a port from 0 to 65535')
  return n
}

async function serveCommand(opts: ServeOptions): Promise<void> {
  const pool = await Pool.create({
    models: namedModels(opts.model),
    defaultModel: opts.defaultModel,
    devices: opts.devices.split(',').map((d) => d.trim()),
    cpuWorkers: opts.cpuWorkers,
    maxQueuedItems: opts.maxQueuedItems,
    cache: opts.cache === undefined ? false : { maxEntries: opts.cache },
  })
  let app: FastifyInstance | undefined
  let address: string
  try {
    // fastify is loaded here, only by this command.
    const { createServer } = await import('./server.js')
    app = await createServer(pool, {
      apiKey: process.env.INFERPOOL_API_KEY || undefined,
      maxItems: opts.maxItems,
      maxTextLength: opts.maxTextLength,
      maxBodyBytes: opts.maxBodyBytes,
      timeoutMs: opts.timeoutMs,
      logger: opts.log,
    })
    address = await app.listen({ host: opts.host, port: opts.port })
  } catch (error) {
    await app?.close()
    await pool.close()
    throw error
  }
  const server = app
  const auth = process.env.INFERPOOL_API_KEY ? 'API key required' : 'no API key'
  process.stderr.write(`inferpool: listening on ${address} (models: ${pool.models.join(', ')}; ${auth})\n`)
  // SIGTERM or SIGINT: stop taking requests, answer those in flight (their texts drain from
  // the pool), then exit. Past --drain-timeout-ms, what is still queued fails with 503.
  const stop = async (signal: string) => {
    process.stderr.write(`inferpool: ${signal}: draining\n`)
    const deadline = setTimeout(() => void pool.close({ drain: false }), opts.drainTimeoutMs)
    try {
      await server.close()
      await pool.close()
    } finally {
      clearTimeout(deadline)
    }
    process.stderr.write('inferpool: stopped\n')
  }
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      stop(signal).catch((error: unknown) => {
        process.stderr.write(`inferpool: ${String(error)}\n`)
        process.exitCode = 1
      })
    })
  }
}

const program = new Command()
  .name('inferpool')
  .description('Batched embeddings and text generation on Rust threads with ONNX Runtime')
  .showHelpAfterError()

program
  .command('embed')
  .description('split files into chunks and write their embeddings as JSON Lines {id, text, embedding}')
  .argument('<files...>', 'text files to embed; - reads standard input')
  .option('-m, --model <model>', 'model folder or ONNX file, or "default" (all-MiniLM-L6-v2)', 'default')
  .option('-o, --out <file>', 'write JSON Lines here instead of standard output')
  .option('-d, --devices <list>', 'comma-separated devices: cpu, cuda:N', 'cpu')
  .option('--cpu-workers <n>', 'worker threads on the CPU', positive)
  .option('--max-chars <n>', 'longest chunk in characters', positive, 1000)
  .option('--no-progress', 'do not show a progress bar')
  .action(embedCommand)

program
  .command('generate')
  .description(
    'generate a text for each line of the files with a seq2seq (T5-style) model and write JSON Lines {id, prompt, text, finishReason}',
  )
  .argument('<files...>', 'text files of prompts, one per line (blank lines are skipped); - reads standard input')
  .requiredOption(
    '-m, --model <path>',
    'seq2seq model folder (encoder_model.onnx and a decoder); required: the built-in model only embeds',
  )
  .option('-o, --out <file>', 'write JSON Lines here instead of standard output')
  .option('-d, --devices <list>', 'comma-separated devices: cpu, cuda:N', 'cpu')
  .option('--cpu-workers <n>', 'worker threads on the CPU', positive)
  .option(
    '--max-new-tokens <n>',
    "most tokens per text (default: the model's generation_config.json, else 64)",
    integerIn(1, MAX_NEW_TOKENS),
  )
  .option('--min-new-tokens <n>', 'the model cannot end a text before this many tokens', integerIn(0, MAX_NEW_TOKENS))
  .option('--temperature <t>', '0 (default) decodes greedily; above 0 samples', decimal(0, 100))
  .option('--top-k <k>', 'sample among the k most likely tokens only (0: all)', integerIn(0, 2 ** 31 - 1))
  .option('--top-p <p>', 'sample among the most likely tokens up to this probability (1: all)', decimal(0, 1, true))
  .option(
    '--seed <n>',
    'seed of the sampling: the same seed gives the same texts',
    integerIn(0, Number.MAX_SAFE_INTEGER),
  )
  .option('--stop <text>', 'end a text before this text; repeat for several (at most 16)', stopText, [])
  .option('--repetition-penalty <x>', 'divide the logits of tokens already generated (1: off)', decimal(0, 100, true))
  .option('--no-progress', 'do not show a progress bar')
  .action(generateCommand)

program
  .command('worker')
  .description('serve models to RemotePool clients from BullMQ queues on Redis (needs bullmq and ioredis)')
  .requiredOption('-r, --redis <url>', 'Redis URL, redis://[user:password@]host:port[/db]')
  .option(
    '-m, --model <model>',
    'a model to serve: name=path, or a path (named "default"); repeat for several. Default: the built-in model',
    collect,
    [],
  )
  .option('-d, --devices <list>', 'comma-separated devices: cpu, cuda:N, or auto', 'cpu')
  .option('--cpu-workers <n>', 'worker threads on the CPU', positive)
  .option('-c, --concurrency <n>', 'jobs run at once per model (their texts are batched together)', positive)
  .option('--prefix <prefix>', "BullMQ key prefix, as the clients' (default: inferpool)")
  .option('--lock-duration <ms>', 'job lock, milliseconds: a worker stopped longer loses its jobs', positive)
  .option('--stalled-interval <ms>', 'how often to recover the jobs of dead workers, milliseconds', positive)
  .option('--max-wait-ms <ms>', 'how long a partial batch may wait for more texts', nonNegative)
  .option('--max-queued-items <n>', 'most texts queued in the pool; beyond it jobs go back to the queue', positive)
  .action(workerCommand)

program
  .command('serve')
  .description(
    'serve the pool over HTTP: OpenAI /v1/embeddings and /v1/completions (seq2seq models), TEI /embed, ' +
      '/v1/models, /info, /health, /metrics ' +
      '(needs fastify; with INFERPOOL_API_KEY set, requests need Authorization: Bearer <key>)',
  )
  .option(
    '-m, --model <model>',
    'a model to serve: name=path, or a path (named "default"); repeat for several. Default: the built-in model',
    collect,
    [],
  )
  .option('--default-model <name>', 'the model used when a request names none')
  .option('--host <host>', 'interface to listen on', '127.0.0.1')
  .option('-p, --port <port>', 'port to listen on (0: any free port)', port, 8080)
  .option('-d, --devices <list>', 'comma-separated devices: cpu, cuda:N, auto', 'cpu')
  .option('--cpu-workers <n>', 'worker threads on the CPU', positive)
  .option('--max-queued-items <n>', 'texts queued at most; requests beyond get 429', positive)
  .option('--cache <entries>', 'cache results of up to this many texts', positive)
  .option('--max-items <n>', 'most texts per request (default 2048)', positive)
  .option('--max-text-length <chars>', 'longest text in characters (default 100000)', positive)
  .option('--max-body-bytes <bytes>', 'largest request body (default 16 MiB)', positive)
  .option('--timeout-ms <ms>', 'answer 504 to a request not done by then (default 60000)', positive)
  .option('--drain-timeout-ms <ms>', 'on SIGTERM, how long queued texts may take to drain', positive, 30_000)
  .option('--log', 'log every request (JSON lines on standard output)', false)
  .action(serveCommand)

program.parseAsync().catch((error: unknown) => {
  const message = error instanceof PoolError ? `${error.code}: ${error.message}` : String(error)
  process.stderr.write(`inferpool: ${message}\n`)
  process.exitCode = 1
})
