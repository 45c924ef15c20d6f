// The workloads, as plain data (planned by the parent process) and how a contender's process runs
// and measures one of them against its `embed(texts)`.
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import { seeded } from './random.mjs'
import { percentile } from './stats.mjs'

const CALL_SIZE = 160

/**
 * The workloads for a corpus of `size` texts; `quick` shrinks each ~10×. Those marked `onRequest`
 * run only when named (`--workloads`).
 */
export function planWorkloads(size, quick) {
  const calls = Math.ceil(size / CALL_SIZE)
  const singles = quick ? 200 : 2000
  const rate = 20
  const arrivals = 100
  const seconds = quick ? 1 : 10
  return [
    { id: 'bulk', label: `bulk: ${size} texts, ${calls} calls of ${CALL_SIZE} one after another` },
    { id: 'concurrent', label: `${calls} concurrent calls of ${CALL_SIZE}` },
    { id: 'singles', count: singles, label: `${singles} concurrent single-text calls` },
    { id: 'trickle', rate, seconds, label: `trickle: ${rate} single-text calls/s for ${seconds} s` },
    {
      id: 'arrivals',
      rate: arrivals,
      seconds,
      onRequest: true,
      label: `random arrivals: ${arrivals} single-text calls/s on average for ${seconds} s`,
    },
  ]
}

/** Runs one workload and returns its row: throughput, latency per call, loop delay, CPU. */
export async function runWorkload(spec, embed, texts) {
  const loop = monitorEventLoopDelay({ resolution: 1 })
  loop.enable()
  // The histogram records the gap between two ticks of its timer: let it tick once before the
  // workload, and once after it (below), or a loop blocked from start to end records nothing.
  await sleep(2)
  // process.cpuUsage() covers every thread of the process: the main thread, worker threads,
  // inferpool's Rust threads and ONNX Runtime's own.
  const cpu = process.cpuUsage()
  const started = performance.now()
  const { latencies, items } = await RUNNERS[spec.id](spec, checked(embed), texts)
  const seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  await sleep(2)
  loop.disable()
  return {
    items,
    calls: latencies.length,
    itemsPerSecond: items / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    loopP99: loop.percentile(99) / 1e6,
    cpuMsPerItem: (used.user + used.system) / 1000 / items,
  }
}

/** Fails loudly when a contender returns the wrong number of vectors. */
function checked(embed) {
  return async (texts) => {
    const vectors = await embed(texts)
    if (vectors.length !== texts.length) throw new Error(`${texts.length} texts gave ${vectors.length} vectors`)
    return vectors
  }
}

function callsOf(texts) {
  return Array.from({ length: Math.ceil(texts.length / CALL_SIZE) }, (_, c) =>
    texts.slice(c * CALL_SIZE, (c + 1) * CALL_SIZE),
  )
}

/** Collects each call's latency (from `started`) and counts the texts embedded. */
function recorder() {
  const record = {
    latencies: [],
    items: 0,
    async add(started, texts, call) {
      await call
      record.latencies.push(performance.now() - started)
      record.items += texts.length
    },
  }
  return record
}

const RUNNERS = {
  async bulk(_, embed, texts) {
    const record = recorder()
    for (const call of callsOf(texts)) await record.add(performance.now(), call, embed(call))
    return record
  },

  // All calls arrive together, so each one's latency counts from the same instant: a contender
  // that does work on the caller's thread while accepting a call delays the calls behind it.
  async concurrent(_, embed, texts) {
    const record = recorder()
    const started = performance.now()
    await Promise.all(callsOf(texts).map((call) => record.add(started, call, embed(call))))
    return record
  },

  async singles({ count }, embed, texts) {
    const record = recorder()
    const chosen = Array.from({ length: count }, (_, i) => texts[i % texts.length])
    const started = performance.now()
    await Promise.all(chosen.map((text) => record.add(started, [text], embed([text]))))
    return record
  },

  // A steady, open-loop load: call i is due at start + i / rate whatever happened before it.
  // Latency counts from the due time, so a call that could not even be issued on time (a busy
  // event loop) is charged for the wait.
  async trickle({ rate, seconds }, embed, texts) {
    return paced(embed, texts, Math.round(rate * seconds), (i) => (i * 1000) / rate)
  },

  // Calls as independent users make them: the gaps between them are random (exponential, the
  // same sequence for every contender), so calls often overlap although the machine has room
  // for them on average. Latency counts from the due time, as in the trickle.
  async arrivals({ rate, seconds }, embed, texts) {
    const next = seeded()
    const count = Math.round(rate * seconds)
    const due = []
    for (let i = 0, at = 0; i < count; i++) {
      // A uniform draw in (0, 1], so that the logarithm is finite.
      at += (-Math.log((next(2 ** 30) + 1) / 2 ** 30) * 1000) / rate
      due.push(at)
    }
    return paced(embed, texts, count, (i) => due[i])
  },
}

/** Calls `count` single texts, call i at `offset(i)` ms after the start, whatever happened before. */
async function paced(embed, texts, count, offset) {
  const record = recorder()
  const start = performance.now()
  const pending = []
  for (let i = 0; i < count; i++) {
    const due = start + offset(i)
    const wait = due - performance.now()
    if (wait > 0) await sleep(wait)
    const text = texts[i % texts.length]
    pending.push(record.add(due, [text], embed([text])))
  }
  await Promise.all(pending)
  return record
}
