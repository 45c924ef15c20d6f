// Real processes for the scale-out tests: `inferpool worker` (the built CLI) and RemotePool
// clients (fixtures/remote-client.mjs), each bounded in time.
import { type ChildProcess, fork, spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'

const ROOT = join(import.meta.dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const CLIENT = join(import.meta.dirname, 'fixtures', 'remote-client.mjs')

/** How long a worker may take to start, or to finish its active jobs once told to stop. */
const WORKER_MS = 60_000

/** What a worker prints when it stops. */
export interface WorkerSummary {
  jobs: number
  texts: number
  failedAttempts: number
  overloaded: number
  meanBatchSize: number
}

export interface WorkerProcess {
  /** Its name, as stored on the jobs it runs. */
  name: string
  child: ChildProcess
  /** Everything it printed on standard error so far. */
  output(): string
  /** SIGTERM; resolves with its exit code and summary once it has exited. */
  stop(): Promise<{ code: number | null; summary: WorkerSummary }>
  /** SIGKILL; resolves once it has exited. */
  kill(): Promise<void>
}

/** Starts `inferpool worker --redis <url> ...args` and resolves once it says it is ready. */
export async function startWorker(url: string, args: string[]): Promise<WorkerProcess> {
  const child = spawn(process.execPath, [CLI, 'worker', '--redis', url, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  const ready = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the worker was not ready within ${WORKER_MS} ms:\n${stderr}`)),
      WORKER_MS,
    )
    child.stderr!.on('data', (chunk) => {
      stderr += chunk
      const match = /inferpool worker (\S+) ready/.exec(stderr)
      if (match) {
        clearTimeout(timer)
        resolve(match[1])
      }
    })
    exited.then(([code]) => {
      clearTimeout(timer)
      reject(new Error(`the worker exited with ${code}:\n${stderr}`))
    })
  })
  const name = await ready
  const wait = async () => {
    const timer = setTimeout(() => child.kill('SIGKILL'), WORKER_MS)
    const [code] = await exited
    clearTimeout(timer)
    return code
  }
  return {
    name,
    child,
    output: () => stderr,
    async stop() {
      child.kill('SIGTERM')
      const code = await wait()
      return { code, summary: summary(stderr) }
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await wait()
    },
  }
}

/** The numbers of a worker's last line. */
function summary(stderr: string): WorkerSummary {
  const match =
    /stopped: (\d+) jobs, (\d+) texts, (\d+) failed attempts, (\d+) put back when full, mean batch size ([\d.]+)/.exec(
      stderr,
    )
  if (!match) throw new Error(`the worker printed no summary:\n${stderr}`)
  const [jobs, texts, failedAttempts, overloaded, meanBatchSize] = match.slice(1).map(Number)
  return { jobs, texts, failedAttempts, overloaded, meanBatchSize }
}

/** What a client process is asked to do. */
export interface ClientPlan {
  url: string
  /** RemotePool options besides `connection`. */
  options: Record<string, unknown>
  /** The calls, each a list of texts. */
  calls: string[][]
  /** One call at a time (true) or all at once. */
  sequential: boolean
}

/** What a client process answers: per call its vectors, or its error. */
export type ClientResult = ({ vectors: Float32Array[] } | { error: string })[]

/** Runs `plan` in a client process of its own; bounded by `ms`. */
export async function runClient(plan: ClientPlan, ms = WORKER_MS): Promise<ClientResult> {
  const child = fork(CLIENT, [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const timer = setTimeout(() => child.kill('SIGKILL'), ms)
  try {
    const answer = once(child, 'message') as Promise<[ClientResult]>
    const exited = once(child, 'exit').then(([code]) => {
      throw new Error(`the client exited with ${code} before answering`)
    })
    child.send(plan)
    const [result] = await Promise.race([answer, exited])
    return result
  } finally {
    clearTimeout(timer)
    child.kill()
  }
}
