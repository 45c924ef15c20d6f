// Scale-out on a real Redis with real `inferpool worker` processes: results against a local
// pool, a worker killed or stopped mid-job, batching across client processes, aborts, timeouts,
// a full pool, and a Redis restart with append-only persistence. Every wait is bounded.
import { setTimeout as sleep } from 'node:timers/promises'

import { type Job, Queue, QueueEvents } from 'bullmq'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { RemotePool } from '../src/bullmq/index.js'
import { queueName } from '../src/bullmq/wire.js'
import { Pool, PoolError } from '../src/index.js'
import { cosine } from './fixtures/reference.js'
import { TINY_BERT } from './helpers.js'
import { type RedisServer, startRedis } from './redis.js'
import { type ClientResult, type WorkerProcess, runClient, startWorker } from './workers.js'

const WORDS = ['the', 'man', 'is', 'eating', 'food', 'bread', 'dog', 'cat', 'runs', 'and']

/** `n` distinct texts of the tiny model's vocabulary. */
const texts = (n: number, tag: string) =>
  Array.from({ length: n }, (_, i) => `${tag} ${WORDS[i % 10]} ${WORDS[(i * 7) % 10]} ${i} ${WORDS[(i * 3) % 10]}`)

/** Splits `all` into calls of 1 to `max` texts. */
const callsOf = (all: string[], max: number) => {
  const calls: string[][] = []
  for (let at = 0, k = 0; at < all.length; k++) {
    const size = 1 + ((k * 5) % max)
    calls.push(all.slice(at, at + size))
    at += size
  }
  return calls
}

/** Waits until `done()` holds, checking every 20 ms, for at most `ms`. */
async function until(done: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(20)
  }
}

async function code(promise: Promise<unknown>): Promise<string> {
  return promise.then(
    () => 'resolved',
    (e: unknown) => (e instanceof PoolError ? e.code : `not a PoolError: ${String(e)}`),
  )
}

/** Watches one queue from the start of its event stream: completions per job, stalls, failures. */
async function watch(url: string, prefix: string) {
  const events = new QueueEvents(queueName('default'), { connection: { url }, prefix, lastEventId: '0-0' })
  const queue = new Queue(queueName('default'), { connection: { url }, prefix })
  const completed = new Map<string, number>()
  const stalled = new Set<string>()
  const failed: string[] = []
  events.on('completed', ({ jobId }) => completed.set(jobId, (completed.get(jobId) ?? 0) + 1))
  events.on('stalled', ({ jobId }) => stalled.add(jobId))
  events.on('failed', ({ jobId, failedReason }) => failed.push(`${jobId}: ${failedReason}`))
  await Promise.all([events.waitUntilReady(), queue.waitUntilReady()])
  return {
    queue,
    completed,
    stalled,
    failed,
    /** Ids of the active jobs that `worker` holds. */
    async heldBy(worker: WorkerProcess): Promise<Set<string>> {
      const active: Job[] = await queue.getJobs(['active'])
      return new Set(active.filter((job) => job.processedBy === worker.name).map((job) => job.id as string))
    },
    /** Jobs of the queue in any state. */
    async size(): Promise<number> {
      const counts = await queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'completed', 'failed')
      return Object.values(counts).reduce((a, b) => a + b, 0)
    },
    close: () => Promise.all([events.close(), queue.close()]),
  }
}

let redis: RedisServer
let local: Pool
/** The built-in model, for the tests that need jobs slow enough to catch a worker holding some. */
let builtIn: Pool | undefined
let prefixes = 0
const nextPrefix = () => `test${++prefixes}`
const workerArgs = (prefix: string, ...more: string[]) => [
  '--model',
  more.includes('--model') ? more.splice(more.indexOf('--model'), 2)[1] : TINY_BERT,
  '--cpu-workers',
  '1',
  '--prefix',
  prefix,
  ...more,
]

/** Checks every call's vectors against the local pool: all there, in order, cosine ≥ 0.9999. */
async function expectReference(
  calls: string[][],
  results: ClientResult | Float32Array[][],
  pool: Pool = local,
): Promise<void> {
  expect(results).toHaveLength(calls.length)
  const reference = await pool.embed(calls.flat())
  let k = 0
  let worst = 1
  results.forEach((result, c) => {
    const vectors = Array.isArray(result) ? result : 'vectors' in result ? result.vectors : undefined
    expect(vectors, `call ${c}: ${JSON.stringify(result)}`).toBeDefined()
    expect(vectors).toHaveLength(calls[c].length)
    for (const vector of vectors as Float32Array[]) worst = Math.min(worst, cosine(vector, reference[k++]))
  })
  expect(worst).toBeGreaterThanOrEqual(0.9999)
}

async function builtInPool(): Promise<Pool> {
  builtIn ??= await Pool.create({ cpuWorkers: 1 })
  return builtIn
}

/**
 * Two workers of the built-in model (slow enough to be caught holding jobs) with the given lock
 * and stalled-check periods, under 2000 texts of calls; once the first holds jobs it is stopped
 * (SIGSTOP) and what it holds is read.
 */
async function freezeUnderLoad(tag: string, lockMs: number, stalledMs: number) {
  const prefix = nextPrefix()
  const args = workerArgs(prefix, '--model', 'default', '--concurrency', '4')
  args.push('--lock-duration', String(lockMs), '--stalled-interval', String(stalledMs))
  const [frozen, other] = await Promise.all([startWorker(redis.url, args), startWorker(redis.url, args)])
  const observer = await watch(redis.url, prefix)
  const remote = await RemotePool.create({ connection: redis.url, prefix, maxJobTexts: 16 })
  const calls = callsOf(texts(2000, tag), 9)
  const results = Promise.all(calls.map((call) => remote.embed(call)))
  results.catch(() => undefined)
  await until(async () => (await observer.heldBy(frozen)).size > 0, 30_000, 'the worker to hold jobs')
  frozen.child.kill('SIGSTOP')
  // Let a script it sent just before land, then read what it holds.
  await sleep(100)
  const held = await observer.heldBy(frozen)
  expect(held.size).toBeGreaterThan(0)
  return {
    frozen,
    other,
    observer,
    calls,
    results,
    held,
    async close() {
      frozen.child.kill('SIGCONT')
      await remote.close({ drain: false })
      await observer.close()
      await Promise.all([frozen.kill(), other.kill()])
    },
  }
}

beforeAll(async () => {
  ;[redis, local] = await Promise.all([startRedis(), Pool.create({ model: TINY_BERT, cpuWorkers: 1 })])
})
afterAll(async () => {
  await builtIn?.close()
  await local?.close()
  await redis?.stop()
})

describe('RemotePool with inferpool worker processes', () => {
  it('answers client processes through two workers with the local pool vectors, in order', async () => {
    const prefix = nextPrefix()
    const workers = await Promise.all([0, 1].map(() => startWorker(redis.url, workerArgs(prefix))))
    const plans = [0, 1, 2].map((c) => callsOf(texts(120, `client${c}`), 7))
    const results = await Promise.all(
      plans.map((calls) =>
        runClient({ url: redis.url, options: { prefix, maxJobTexts: 8 }, calls, sequential: false }),
      ),
    )
    for (const [c, calls] of plans.entries()) await expectReference(calls, results[c])
    const stopped = await Promise.all(workers.map((w) => w.stop()))
    for (const { code: exit, summary } of stopped) {
      expect(exit).toBe(0)
      expect(summary.jobs).toBeGreaterThan(0)
    }
    expect(stopped.reduce((sum, s) => sum + s.summary.texts, 0)).toBe(360)
  })

  it('batches single-text calls of three client processes together on one worker', async () => {
    const prefix = nextPrefix()
    const worker = await startWorker(redis.url, workerArgs(prefix, '--max-wait-ms', '5', '--concurrency', '8'))
    // One call at a time per client: every job holds one text, so a batch of more than one
    // text holds texts of different clients.
    const plans = [0, 1, 2].map((c) => texts(60, `single${c}`).map((text) => [text]))
    const results = await Promise.all(
      plans.map((calls) => runClient({ url: redis.url, options: { prefix, coalesceMs: 0 }, calls, sequential: true })),
    )
    for (const [c, calls] of plans.entries()) await expectReference(calls, results[c])
    const { code: exit, summary } = await worker.stop()
    expect(exit).toBe(0)
    expect(summary.jobs).toBe(180)
    expect(summary.texts).toBe(180)
    expect(summary.meanBatchSize).toBeGreaterThan(1)
  })

  it('recovers the jobs of a worker killed mid-job: each completes once, every call resolves once', async () => {
    const run = await freezeUnderLoad('kill', 3000, 500)
    try {
      await run.frozen.kill()
      await expectReference(run.calls, await run.results, await builtInPool())
      // The re-run jobs are exactly those it held, and no job completed twice.
      await until(() => run.observer.stalled.size >= run.held.size, 10_000, 'the stalled events')
      expect([...run.observer.stalled].sort()).toEqual([...run.held].sort())
      expect([...run.observer.completed.values()].every((n) => n === 1)).toBe(true)
      expect(run.observer.failed).toEqual([])
      expect((await run.other.stop()).code).toBe(0)
    } finally {
      await run.close()
    }
  })

  it('refuses the late completion of a worker stopped past its lock (SIGSTOP, SIGCONT)', async () => {
    const run = await freezeUnderLoad('pause', 1000, 300)
    const { observer, held } = run
    try {
      // Its jobs are recovered and completed by the other worker while it is stopped.
      await until(() => [...held].every((id) => observer.completed.has(id)), 30_000, 'the held jobs to complete')
      run.frozen.child.kill('SIGCONT')
      await expectReference(run.calls, await run.results, await builtInPool())
      // It finishes its stale copies and tries to complete them: the lock check refuses.
      await sleep(1500)
      expect([...held].every((id) => observer.stalled.has(id))).toBe(true)
      expect([...observer.completed.values()].every((n) => n === 1)).toBe(true)
      expect(observer.failed).toEqual([])
      expect(run.frozen.child.exitCode).toBeNull()
      const stopped = await Promise.all([run.frozen.stop(), run.other.stop()])
      expect(stopped.map((s) => s.code)).toEqual([0, 0])
    } finally {
      await run.close()
    }
  })

  it('finishes its active jobs on SIGTERM and exits; the queued ones wait for another worker', async () => {
    const prefix = nextPrefix()
    const first = await startWorker(redis.url, workerArgs(prefix, '--concurrency', '2'))
    const observer = await watch(redis.url, prefix)
    const remote = await RemotePool.create({ connection: redis.url, prefix, maxJobTexts: 32 })
    let second: WorkerProcess | undefined
    try {
      const calls = callsOf(texts(2000, 'term'), 9)
      const pending = Promise.all(calls.map((call) => remote.embed(call)))
      await until(async () => (await observer.heldBy(first)).size > 0, 30_000, 'the worker to hold jobs')
      const held = await observer.heldBy(first)
      const { code: exit } = await first.stop()
      expect(exit).toBe(0)
      // What it held when told to stop, it completed itself: nothing stalled.
      expect([...held].every((id) => observer.completed.get(id) === 1)).toBe(true)
      second = await startWorker(redis.url, workerArgs(prefix))
      await expectReference(calls, await pending)
      expect(observer.stalled.size).toBe(0)
      expect((await second.stop()).code).toBe(0)
    } finally {
      await remote.close()
      await observer.close()
      await Promise.all([first.kill(), second?.kill()])
    }
  })

  it('puts jobs back while the worker pool is full and still answers every call', async () => {
    const prefix = nextPrefix()
    const worker = await startWorker(redis.url, workerArgs(prefix, '--max-queued-items', '8', '--concurrency', '6'))
    const calls = Array.from({ length: 24 }, (_, c) => texts(8, `full${c}`))
    const results = await runClient({ url: redis.url, options: { prefix, maxJobTexts: 8 }, calls, sequential: false })
    await expectReference(calls, results)
    const { code: exit, summary } = await worker.stop()
    expect(exit).toBe(0)
    expect(summary.overloaded).toBeGreaterThan(0)
    expect(summary.jobs).toBe(24)
  })
})

describe('aborts, timeouts and missing workers', () => {
  it('removes the job of an aborted or timed-out call that no worker has started', async () => {
    const prefix = nextPrefix()
    const worker = await startWorker(redis.url, workerArgs(prefix))
    const observer = await watch(redis.url, prefix)
    const remote = await RemotePool.create({ connection: redis.url, prefix })
    try {
      // A stopped worker is still connected (seen), but takes nothing: the jobs wait.
      worker.child.kill('SIGSTOP')
      const controller = new AbortController()
      const aborted = code(remote.embed(['wait here'], { signal: controller.signal }))
      await until(async () => (await observer.size()) === 1, 5000, 'the job to be queued')
      controller.abort(new Error('user left'))
      expect(await aborted).toBe('ABORTED')
      await until(async () => (await observer.size()) === 0, 5000, 'the aborted job to be removed')

      const started = performance.now()
      expect(await code(remote.embed(['wait too'], { timeoutMs: 300 }))).toBe('TIMEOUT')
      expect(performance.now() - started).toBeLessThan(2000)
      await until(async () => (await observer.size()) === 0, 5000, 'the timed-out job to be removed')

      worker.child.kill('SIGCONT')
      await expectReference([['after']], [await remote.embed(['after'])])
      await until(async () => (await observer.size()) === 0, 5000, 'the delivered result to be removed')
    } finally {
      worker.child.kill('SIGCONT')
      await remote.close()
      await observer.close()
      await worker.stop()
    }
  })

  it('answers an aborted call at once and drops the result of its started job', async () => {
    const prefix = nextPrefix()
    const worker = await startWorker(redis.url, workerArgs(prefix, '--lock-duration', '20000'))
    const observer = await watch(redis.url, prefix)
    const remote = await RemotePool.create({ connection: redis.url, prefix, maxJobTexts: 20000 })
    try {
      const controller = new AbortController()
      const call = code(remote.embed(texts(20000, 'long'), { signal: controller.signal }))
      await until(async () => (await observer.heldBy(worker)).size === 1, 10_000, 'the job to start')
      worker.child.kill('SIGSTOP')
      controller.abort()
      expect(await call).toBe('ABORTED')
      // Held by a worker: not removed, it finishes; then its result is removed unread.
      expect(await observer.size()).toBe(1)
      worker.child.kill('SIGCONT')
      await until(() => observer.completed.size === 1, 20_000, 'the started job to complete')
      await until(async () => (await observer.size()) === 0, 5000, 'the dropped result to be removed')
      expect((await remote.status()).outstandingJobs).toBe(0)
    } finally {
      worker.child.kill('SIGCONT')
      await remote.close()
      await observer.close()
      await worker.stop()
    }
  })

  it('fails with REMOTE_UNAVAILABLE when no worker serves the model, at once or after the grace', async () => {
    const prefix = nextPrefix()
    const remote = await RemotePool.create({
      connection: redis.url,
      prefix,
      unavailableAfterMs: 1000,
      checkIntervalMs: 200,
    })
    const observer = await watch(redis.url, prefix)
    try {
      const started = performance.now()
      const error = await remote.embed(['nobody']).catch((e) => e)
      expect(error).toBeInstanceOf(PoolError)
      expect(error.code).toBe('REMOTE_UNAVAILABLE')
      expect(error.message).toContain('inferpool worker')
      expect(performance.now() - started).toBeLessThan(1000)

      // Seen, then gone: a call waits out the grace, fails, and its job is removed.
      const worker = await startWorker(redis.url, workerArgs(prefix))
      await expectReference([['seen']], [await remote.embed(['seen'])])
      await worker.kill()
      const waited = performance.now()
      expect(await code(remote.embed(['left behind']))).toBe('REMOTE_UNAVAILABLE')
      expect(performance.now() - waited).toBeLessThan(5000)
      await until(async () => (await observer.size()) === 0, 5000, 'the unserved job to be removed')
    } finally {
      await remote.close()
      await observer.close()
    }
  })

  it('loses no queued job when Redis restarts with append-only persistence', async () => {
    const durable = await startRedis({ appendOnly: true })
    const prefix = nextPrefix()
    const remote = await RemotePool.create({ connection: durable.url, prefix, maxJobTexts: 4 })
    let worker: WorkerProcess | undefined
    try {
      // Seen once, then gone: the calls queue their jobs and wait (within unavailableAfterMs).
      const first = await startWorker(durable.url, workerArgs(prefix))
      await remote.embed(['seen'])
      expect((await first.stop()).code).toBe(0)
      const calls = callsOf(texts(100, 'durable'), 6)
      const pending = Promise.all(calls.map((call) => remote.embed(call)))
      await until(async () => (await remote.status()).models.default.waiting === 25, 5000, 'the jobs to be queued')
      await durable.restart()
      worker = await startWorker(durable.url, workerArgs(prefix))
      await expectReference(calls, await pending)
      expect((await worker.stop()).summary.texts).toBe(100)
    } finally {
      await remote.close()
      await worker?.kill()
      await durable.stop()
    }
  })
})

describe('the client and the worker checks', () => {
  it('checks calls, streams in order, reports status and metrics, and closes', async () => {
    const prefix = nextPrefix()
    const worker = await startWorker(redis.url, workerArgs(prefix))
    const remote = await RemotePool.create({ connection: redis.url, prefix, models: ['default'] })
    try {
      const invalid = async (promise: Promise<unknown>, message: RegExp) => {
        const error = (await promise.catch((e: unknown) => e)) as PoolError
        expect(error).toBeInstanceOf(PoolError)
        expect(error.code).toBe('INVALID_INPUT')
        expect(error.message).toMatch(message)
      }
      await invalid(remote.embed('one text' as never), /texts must be an array of strings/)
      await invalid(remote.embed(['a', 2] as never), /texts\[1\] must be a string/)
      await invalid(remote.embed(['a'], { model: 'other' }), /unknown model "other"/)
      await invalid(remote.embed(['a'], { onProgress: () => undefined } as never), /unknown option "onProgress"/)
      await invalid(remote.embed(['a'], { timeoutMs: -1 }), /timeoutMs/)
      await invalid(remote.embed(['a'], { priority: 'urgent' as never }), /priority/)
      expect(await code(remote.embed(['a'], { signal: AbortSignal.abort() }))).toBe('ABORTED')
      expect(await remote.embed([])).toEqual([])

      const source = texts(150, 'stream')
      const streamed: Float32Array[] = []
      for await (const { index, embedding } of remote.embedStream(source, { chunkSize: 16, priority: 'interactive' })) {
        expect(index).toBe(streamed.length)
        streamed.push(embedding)
      }
      await expectReference([source], [streamed])

      const status = await remote.status()
      expect(status).toMatchObject({ outstandingCalls: 0, outstandingJobs: 0, texts: 150 })
      expect(status.models.default).toMatchObject({ workers: 1, waiting: 0, active: 0 })
      const metrics = await remote.metrics()
      expect(metrics).toContain('inferpool_remote_texts_total{model="default"} 150')
      expect(metrics).toContain('inferpool_remote_workers{model="default"} 1')
      expect(metrics).toMatch(/inferpool_remote_errors_total\{model="default",code="ABORTED"\} 1/)
      expect(metrics).toMatch(/inferpool_remote_call_duration_seconds_count\{model="default"\} [1-9]/)
    } finally {
      await remote.close()
      await worker.stop()
    }
    expect(remote.closed).toBe(true)
    expect(await code(remote.embed(['late']))).toBe('POOL_CLOSED')
  })

  it('fails a malformed job for good with INVALID_INPUT, without retries', async () => {
    const prefix = nextPrefix()
    const worker = await startWorker(redis.url, workerArgs(prefix))
    const observer = await watch(redis.url, prefix)
    try {
      await observer.queue.add('embed', { texts: 'not an array' }, { jobId: 'malformed', attempts: 3 })
      await until(() => observer.failed.length === 1, 10_000, 'the job to fail')
      expect(observer.failed[0]).toMatch(/^malformed: INVALID_INPUT: /)
      const job = await observer.queue.getJob('malformed')
      expect(job?.attemptsMade).toBe(1)
    } finally {
      await observer.close()
      await worker.stop()
    }
  })

  it('fails RemotePool.create with REMOTE_UNAVAILABLE when Redis does not answer in time', async () => {
    const started = performance.now()
    const error = await RemotePool.create({ connection: 'redis://127.0.0.1:1', connectTimeoutMs: 500 }).catch((e) => e)
    expect(error.code).toBe('REMOTE_UNAVAILABLE')
    expect(performance.now() - started).toBeLessThan(3000)
  })
})
