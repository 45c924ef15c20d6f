// How a `RemotePool` learns what became of its jobs: the event listener of each model, and the
// periodic check for what events cannot tell (missed events, lost jobs, workers gone).

import { PoolError } from '../errors.js'
import type { Channel, JobBook } from './jobs.js'
import type { ResolvedRemoteOptions } from './options.js'
import { failureError } from './wire.js'

/** Hears the events of every model's queue and checks its jobs every `checkIntervalMs`. */
export class Watcher {
  readonly #settings: ResolvedRemoteOptions
  readonly #channels: Map<string, Channel>
  readonly #book: JobBook
  readonly #checker: NodeJS.Timeout
  #checking = false

  constructor(settings: ResolvedRemoteOptions, channels: Map<string, Channel>, book: JobBook) {
    this.#settings = settings
    this.#channels = channels
    this.#book = book
    this.#checker = setInterval(() => void this.#checkAll(), settings.checkIntervalMs)
    this.#checker.unref()
    for (const channel of channels.values()) this.#listen(channel)
  }

  /** Stops the periodic check. */
  stop(): void {
    clearInterval(this.#checker)
  }

  /**
   * Resolves when a worker serving `channel`'s model has been seen within `unavailableAfterMs`,
   * counting the workers if that is not known.
   *
   * @throws {PoolError} `REMOTE_UNAVAILABLE` when none has.
   */
  async expectWorker(channel: Channel): Promise<void> {
    if (this.#workerSeen(channel)) return
    await this.#countWorkers(channel)
    if (this.#workerSeen(channel)) return
    throw new PoolError(
      'REMOTE_UNAVAILABLE',
      `no worker serving model ${JSON.stringify(channel.model)} has been seen` +
        (channel.seenAt === undefined ? '' : ` for ${Date.now() - channel.seenAt} ms`) +
        ' (start one with `inferpool worker --redis <url>`)',
    )
  }

  #workerSeen(channel: Channel): boolean {
    return channel.seenAt !== undefined && Date.now() - channel.seenAt <= this.#settings.unavailableAfterMs
  }

  /** Counts the workers connected to `channel`'s queue; a failed count counts none. */
  async #countWorkers(channel: Channel): Promise<void> {
    channel.countedAt = Date.now()
    const count = await channel.queue.getWorkersCount().catch(() => 0)
    if (count > 0) channel.seenAt = Date.now()
  }

  /** Wires `channel`'s event listener to the jobs. */
  #listen(channel: Channel): void {
    const { events } = channel
    events.on('active', () => (channel.seenAt = Date.now()))
    events.on('completed', ({ jobId, returnvalue }) => {
      const job = channel.jobs.get(jobId)
      if (job === undefined) return
      channel.seenAt = Date.now()
      this.#book.finishJob(channel, job, undefined, returnvalue)
    })
    events.on('failed', ({ jobId, failedReason }) => {
      const job = channel.jobs.get(jobId)
      if (job !== undefined) this.#book.finishJob(channel, job, failureError(failedReason))
    })
  }

  /** One round of step 4 (see `remote.ts`) over every model with jobs out; rounds never overlap. */
  async #checkAll(): Promise<void> {
    if (this.#checking) return
    this.#checking = true
    try {
      await Promise.all([...this.#channels.values()].map((channel) => this.#check(channel)))
    } finally {
      this.#checking = false
    }
  }

  async #check(channel: Channel): Promise<void> {
    if (channel.jobs.size === 0) return
    await this.#countWorkers(channel)
    const now = Date.now()
    const unavailable = !this.#workerSeen(channel)
    const due = [...channel.jobs.values()].filter((job) => now - job.sentAt >= this.#settings.checkIntervalMs)
    await Promise.all(
      due.map(async (job) => {
        if (unavailable) {
          // Removed when no worker took it; with Redis unreachable, failed all the same.
          const removed = await channel.queue.remove(job.id).catch(() => -1)
          if (removed !== 0) {
            const seen = channel.seenAt === undefined ? 'ever' : `for ${now - channel.seenAt} ms`
            this.#book.finishJob(
              channel,
              job,
              new PoolError(
                'REMOTE_UNAVAILABLE',
                `no worker serving model ${JSON.stringify(channel.model)} has been seen ${seen}`,
              ),
            )
          }
          return
        }
        const found = await channel.queue.getJob(job.id).catch(() => null)
        if (found === null || !channel.jobs.has(job.id)) return
        if (found === undefined) {
          this.#book.finishJob(channel, job, new PoolError('REMOTE_UNAVAILABLE', `job ${job.id} was lost from Redis`))
        } else if (found.finishedOn !== undefined && found.returnvalue != null) {
          this.#book.finishJob(channel, job, undefined, found.returnvalue)
        } else if (found.finishedOn !== undefined) {
          this.#book.finishJob(channel, job, failureError(found.failedReason ?? 'unknown failure'))
        }
      }),
    )
  }
}
