// inferpool: the T5 folder as a seq2seq model of a pool (Pool.create options from the bench),
// every prompt one call from the main thread; tokenizing, encoding, decoding in cohorts and
// detokenizing run on Rust threads.
import { availableParallelism } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'

import { Pool } from '../../../dist/index.js'
import { median } from './measure.mjs'

const MODEL = 't5'

const sum = (values) => values.reduce((a, b) => a + b, 0)

export async function create({ folder, options = {} }) {
  const pool = await Pool.create({ ...options, models: { [MODEL]: { path: folder, kind: 'seq2seq' } } })
  const workers = pool.status().workers.length
  // As Pool.create resolves it when not given.
  const intraOpThreads = options.intraOpThreads ?? Math.max(1, Math.floor(availableParallelism() / workers))
  const settings = Object.keys(options).length === 0 ? 'defaults' : JSON.stringify(options)

  /** One prompt through generateStream; `onToken()` as each token arrives. */
  const stream = async (prompt, maxNewTokens, onToken) => {
    const tokens = []
    let text = ''
    for await (const delta of pool.generateStream(prompt, { maxNewTokens })) {
      text += delta.text
      if (delta.token !== null) {
        tokens.push(delta.token)
        onToken?.()
      }
    }
    return { tokens, text }
  }

  return {
    describe:
      `inferpool ${settings}: ${workers} CPU workers × ${intraOpThreads} intra-op threads, ` +
      `ONNX Runtime ${pool.runtime.version}`,
    generate: stream,
    /** One prompt through `generate` (no tokens until it is done). */
    async generateWhole(prompt, maxNewTokens) {
      const [{ tokens, text }] = await pool.generate([prompt], { maxNewTokens })
      return { tokens, text }
    },
    counters() {
      const { steps, tokens } = pool.status().models[MODEL].generation
      return { steps, tokens }
    },
    probe: (spec) => probe(pool, stream, spec, { folder, intraOpThreads }),
    close: () => pool.close(),
  }
}

/**
 * Inference time over every worker (decoder steps and encoder batches), and how many encoder
 * batches ran: the worker histograms of `pool.metrics()`, summed.
 */
function inferenceTotals(pool) {
  const totals = { seconds: 0, runs: 0, encodes: 0 }
  const pattern = /^inferpool_(inference_seconds|batch_size)_(sum|count)\{([^}]*)\} (\S+)$/
  for (const line of pool.metrics().split('\n')) {
    const match = pattern.exec(line)
    if (!match || !match[3].includes(`model="${MODEL}"`)) continue
    const [, name, part, , value] = match
    if (name === 'inference_seconds' && part === 'sum') totals.seconds += Number(value)
    else if (name === 'inference_seconds' && part === 'count') totals.runs += Number(value)
    else if (name === 'batch_size' && part === 'count') totals.encodes += Number(value)
  }
  return totals
}

/**
 * Time to first token of a prompt that arrives while all the others decode. The others start
 * together with `tokens` new tokens each; in each round, once every one of them has decoded
 * (2r+1)/8 of its tokens the mean decoder step is measured until (2r+2)/8, then the probe prompt
 * is submitted at phase r/rounds of a step later, timed to its first token and left (which
 * cancels it). Then, on the idle pool: the probe alone, and its encoder run alone.
 */
async function probe(pool, stream, { prompts, probeIndex, tokens, rounds }, { folder, intraOpThreads }) {
  const background = prompts.filter((_, i) => i !== probeIndex)
  const prompt = prompts[probeIndex]
  const counts = Array.from(background, () => 0)
  const waiters = []
  const check = () => {
    const least = Math.min(...counts)
    for (const waiter of waiters.filter(({ at }) => least >= at)) {
      waiters.splice(waiters.indexOf(waiter), 1)
      waiter.resolve()
    }
  }
  const reached = (at) =>
    new Promise((resolve) => {
      waiters.push({ at, resolve })
      check()
    })
  const running = background.map((text, i) =>
    stream(text, tokens, () => {
      counts[i]++
      check()
    }),
  )

  const measured = []
  for (let round = 0; round < rounds; round++) {
    await reached(Math.max(1, Math.round(((2 * round + 1) * tokens) / 8)))
    const before = inferenceTotals(pool)
    const stepsBefore = pool.status().models[MODEL].generation.steps
    const [from, tokensBefore] = [performance.now(), sum(counts)]
    await reached(Math.max(2, Math.round(((2 * round + 2) * tokens) / 8)))
    const after = inferenceTotals(pool)
    const steps = pool.status().models[MODEL].generation.steps - stepsBefore
    const stepMs = steps > 0 ? ((after.seconds - before.seconds) * 1000) / (after.runs - before.runs) : Number.NaN
    // The others' time per token as they see it: with several cohorts on a worker, a row waits
    // for each of their steps between two of its tokens.
    const advanced = (sum(counts) - tokensBefore) / counts.length
    const tokenMs = advanced > 0 ? (performance.now() - from) / advanced : Number.NaN
    const phase = round / rounds
    if (phase > 0 && Number.isFinite(stepMs)) await sleep(phase * stepMs)
    const generation = pool.status().models[MODEL].generation
    const started = performance.now()
    let ttftMs = Number.NaN
    for await (const _delta of pool.generateStream(prompt, { maxNewTokens: tokens })) {
      ttftMs = performance.now() - started
      break
    }
    measured.push({
      ttftMs,
      stepMs,
      tokenMs,
      steps,
      phase,
      // Encoder batches in the step window would make it more than decoder steps.
      encodesInWindow: after.encodes - before.encodes,
      rowsDecoding: generation.rows,
      cohorts: generation.cohorts,
      othersStillDecoding: counts.filter((n) => n < tokens).length,
    })
  }
  await Promise.all(running)

  // The probe on the idle pool: tokenize + encode + its first decoder step, as the caller sees it
  // and as the workers timed it.
  const alone = []
  let poolEncodeAndStepMs = Number.NaN
  for (let i = 0; i < 3; i++) {
    const before = inferenceTotals(pool)
    const started = performance.now()
    await pool.generate([prompt], { maxNewTokens: 1 })
    alone.push(performance.now() - started)
    const after = inferenceTotals(pool)
    if (after.runs - before.runs === 2) poolEncodeAndStepMs = (after.seconds - before.seconds) * 1000
  }

  // Its encoder run alone, on an onnxruntime-node session of the same library with the pool's
  // intra-op threads (imported only now: nothing of it ran during the measurements).
  const { createT5Loop } = await import('./ort-main.mjs')
  const loop = await createT5Loop(folder, { intraOpNumThreads: intraOpThreads, interOpNumThreads: 1 })
  const ids = loop.encode(prompt)
  const encodes = []
  for (let i = 0; i < 7; i++) {
    const started = performance.now()
    await loop.runEncoder(ids)
    if (i >= 2) encodes.push(performance.now() - started)
  }
  await loop.release()

  return {
    background: background.length,
    tokens,
    promptTokens: ids.length,
    rounds: measured,
    aloneTtftMs: median(alone),
    poolEncodeAndStepMs,
    encodeMs: median(encodes),
    intraOpThreads,
  }
}
