#!/usr/bin/env node
import { createWriteStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { once } from 'node:events'
import type { Writable } from 'node:stream'
import { text as readAll } from 'node:stream/consumers'

import { MultiBar } from 'cli-progress'
import { Command, InvalidArgumentError } from 'commander'

import { chunkText } from './chunk.js'
import { PoolError } from './errors.js'
import { Pool } from './pool.js'

function positive(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer')
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
  // A multi-bar container with one bar: it draws on the current line and ends it with a newline
  // when stopped, where a single bar restores the cursor it saved at the start, which puts the
  // next line over whatever was written meanwhile.
  const bars =
    opts.progress && process.stderr.isTTY
      ? new MultiBar({
          stream: process.stderr,
          format: 'embedding [{bar}] {value}/{total} chunks | {speed} items/s | ETA {eta_formatted}',
          etaBuffer: 200,
        })
      : undefined
  const started = performance.now()
  const bar = bars?.create(items.length, 0, { speed: '0' })
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
        const seconds = (performance.now() - started) / 1000
        bar?.update(done, { speed: (done / Math.max(seconds, 1e-3)).toFixed(1) })
      }
    }
  } finally {
    bars?.stop()
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

const program = new Command()
  .name('inferpool')
  .description('Batched embeddings on Rust threads with ONNX Runtime')
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

program.parseAsync().catch((error: unknown) => {
  const message = error instanceof PoolError ? `${error.code}: ${error.message}` : String(error)
  process.stderr.write(`inferpool: ${message}\n`)
  process.exitCode = 1
})
