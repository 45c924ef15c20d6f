// `inferpool generate`: prompts from files or standard input, one a line, generated with a
// seq2seq model in parts that keep the pool's decoder full, and written as JSON Lines in input
// order.

import { once } from 'node:events'
import { createWriteStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import type { Writable } from 'node:stream'
import { text as readAll } from 'node:stream/consumers'

import { InvalidArgumentError } from 'commander'

import { progressBar } from './cli-progress.js'
import { PoolError } from './errors.js'
import { Pool } from './pool.js'
import type { GenerateOptions, Generated } from './types.js'

/** Prompts per pool call. */
const PART = 32
/** Most stop texts (the pool's limit). */
const MAX_STOP = 16
/** Most tokens per text (the pool's limit). */
export const MAX_NEW_TOKENS = 1 << 20
/** Calls in flight: the decoder takes rows from all of them, the output waits for the oldest. */
const AHEAD = 8

/** The options of `inferpool generate`, as commander parses them. */
export interface GenerateCommandOptions {
  model: string
  out?: string
  devices: string
  cpuWorkers?: number
  maxNewTokens?: number
  minNewTokens?: number
  temperature?: number
  topK?: number
  topP?: number
  seed?: number
  stop: string[]
  repetitionPenalty?: number
  progress: boolean
}

/**
 * A commander parser of a finite number from `min` to `max` (above `min` when `aboveMin`).
 *
 * @throws {InvalidArgumentError} naming the range.
 */
export function decimal(min: number, max: number, aboveMin = false): (value: string) => number {
  return (value: string) => {
    const n = Number(value)
    const low = aboveMin ? n > min : n >= min
    if (value.trim() === '' || !Number.isFinite(n) || !low || n > max) {
      throw new InvalidArgumentError(
        `expected a number ${aboveMin ? 'above' : 'from'} ${min} ${aboveMin ? 'up ' : ''}to ${max}`,
      )
    }
    return n
  }
}

/**
 * A commander parser of an integer from `min` to `max`.
 *
 * @throws {InvalidArgumentError} naming the range.
 */
export function integerIn(min: number, max: number): (value: string) => number {
  return (value: string) => {
    const n = Number(value)
    if (value.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`)
    }
    return n
  }
}

/** Collects the repeated `--stop` texts (at most {@link MAX_STOP}, none empty). */
export function stopText(value: string, previous: string[]): string[] {
  if (value.length === 0) throw new InvalidArgumentError('expected a non-empty text')
  if (previous.length === MAX_STOP) throw new InvalidArgumentError(`at most ${MAX_STOP} stop texts are taken`)
  return [...previous, value]
}

/** One prompt: a non-blank line, named `file#line` (the line's index from 0). */
interface Prompt {
  id: string
  prompt: string
}

/** Every non-blank line of `files` (`-`: standard input), in order. */
async function readPrompts(files: string[]): Promise<Prompt[]> {
  const prompts: Prompt[] = []
  for (const file of files) {
    const content = file === '-' ? await readAll(process.stdin) : await readFile(file, 'utf8')
    const name = file === '-' ? 'stdin' : file
    content.split(/\r?\n/).forEach((line, i) => {
      if (line.trim() !== '') prompts.push({ id: `${name}#${i}`, prompt: line })
    })
  }
  return prompts
}

async function write(stream: Writable, data: string): Promise<void> {
  if (!stream.write(data)) await once(stream, 'drain')
}

/** Generates a text for every prompt line of `files` and writes `{ id, prompt, text, finishReason }` lines. */
export async function generateCommand(files: string[], opts: GenerateCommandOptions): Promise<void> {
  if (opts.model === 'default') {
    throw new PoolError(
      'INVALID_INPUT',
      'the built-in default model is an embedding model: give a seq2seq model folder (such as a T5 export) with --model',
    )
  }
  if (opts.minNewTokens !== undefined && opts.maxNewTokens !== undefined && opts.minNewTokens > opts.maxNewTokens) {
    throw new PoolError(
      'INVALID_INPUT',
      `--min-new-tokens (${opts.minNewTokens}) exceeds --max-new-tokens (${opts.maxNewTokens})`,
    )
  }
  const items = await readPrompts(files)
  const decoding: GenerateOptions = {
    maxNewTokens: opts.maxNewTokens,
    minNewTokens: opts.minNewTokens,
    temperature: opts.temperature,
    topK: opts.topK,
    topP: opts.topP,
    seed: opts.seed,
    stop: opts.stop,
    repetitionPenalty: opts.repetitionPenalty,
  }
  const pool = await Pool.create({
    model: opts.model,
    devices: opts.devices.split(',').map((d) => d.trim()),
    cpuWorkers: opts.cpuWorkers,
  })
  if (pool.status().models[pool.defaultModel].kind !== 'seq2seq') {
    await pool.close()
    throw new PoolError(
      'INVALID_INPUT',
      `${opts.model} is an embedding model: generate needs a seq2seq model (encoder_model.onnx and a decoder)`,
    )
  }
  const out: Writable = opts.out ? createWriteStream(opts.out) : process.stdout
  const started = performance.now()
  const bar = progressBar(opts.progress, 'generating', 'prompts', items.length)
  let done = 0
  let tokens = 0
  let failed = true
  try {
    // Prompts are handed over PART at a time, AHEAD calls in flight, and written in input
    // order: memory stays flat however many lines there are.
    let next = 0
    const start = (): Promise<Generated[]> => {
      const part = items.slice(next, next + PART)
      next += part.length
      let reported = 0
      const call = pool.generate(
        part.map((item) => item.prompt),
        {
          ...decoding,
          onProgress: (progress) => {
            done += progress.done - reported
            reported = progress.done
            bar.update(done)
          },
        },
      )
      // Awaited in turn; a failure of one not awaited yet must not go unhandled meanwhile.
      call.catch(() => {})
      return call
    }
    const inFlight: Promise<Generated[]>[] = []
    while (inFlight.length < AHEAD && next < items.length) inFlight.push(start())
    let written = 0
    while (inFlight.length > 0) {
      const results = await inFlight.shift()!
      if (next < items.length) inFlight.push(start())
      let lines = ''
      for (const result of results) {
        const { id, prompt } = items[written++]
        tokens += result.tokens.length
        lines += `${JSON.stringify({ id, prompt, text: result.text, finishReason: result.finishReason })}\n`
      }
      await write(out, lines)
    }
    failed = false
  } finally {
    bar.stop()
    // After a failure, what is still queued is not worth finishing.
    await pool.close({ drain: !failed })
    if (out !== process.stdout) {
      out.end()
      await once(out, 'finish')
    }
  }
  const seconds = Math.max((performance.now() - started) / 1000, 1e-3)
  process.stderr.write(
    `generated ${items.length} texts (${tokens} tokens) in ${seconds.toFixed(2)} s ` +
      `(${(items.length / seconds).toFixed(1)} items/s, ${(tokens / seconds).toFixed(1)} tokens/s)\n`,
  )
}
