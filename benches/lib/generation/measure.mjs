// How a contender's process runs and measures a generation workload: every prompt at once or one
// at a time, each prompt's time to first token, the run's tokens per second, event-loop delay and
// CPU time.
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import { percentile } from '../stats.mjs'

export function median(values) {
  return percentile(values, 50)
}

/**
 * Runs `spec` against `contender` and returns its row. `concurrent`: every prompt submitted at
 * once (time to first token from that common start); `serial`: one prompt after another, each
 * awaited (time to first token from the prompt's own start). `whole: true` uses the contender's
 * `generateWhole` (no tokens before the end, so no time to first token).
 */
export async function runGeneration(spec, contender, prompts, maxNewTokens) {
  const generate = spec.whole ? contender.generateWhole : contender.generate
  const ttft = []
  const timed = async (prompt, from) => {
    let first = true
    const output = await generate(prompt, maxNewTokens, () => {
      if (first) ttft.push(performance.now() - (from ?? started))
      first = false
    })
    return output
  }
  const loop = monitorEventLoopDelay({ resolution: 1 })
  loop.enable()
  // The histogram records the gap between two ticks of its timer: let it tick once before the
  // run and once after it, or a loop blocked from start to end records nothing.
  await sleep(2)
  const countersBefore = contender.counters?.()
  const cpu = process.cpuUsage()
  const started = performance.now()
  let outputs
  if (spec.mode === 'concurrent') {
    outputs = await Promise.all(prompts.map((prompt) => timed(prompt)))
  } else {
    outputs = []
    for (const prompt of prompts) outputs.push(await timed(prompt, performance.now()))
  }
  const seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  const countersAfter = contender.counters?.()
  await sleep(2)
  loop.disable()
  const tokens = outputs.reduce((sum, output) => sum + output.tokens.length, 0)
  const steps = countersAfter && countersAfter.steps - countersBefore.steps
  return {
    prompts: prompts.length,
    tokens,
    seconds,
    tokensPerSecond: tokens / seconds,
    ttftP50: spec.whole ? Number.NaN : percentile(ttft, 50),
    ttftP99: spec.whole ? Number.NaN : percentile(ttft, 99),
    loopP99: loop.percentile(99) / 1e6,
    cpuMsPerToken: (used.user + used.system) / 1000 / tokens,
    rowsPerStep: steps ? (countersAfter.tokens - countersBefore.tokens) / steps : undefined,
    outputs,
  }
}
