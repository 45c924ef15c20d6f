// A real Redis for the scale-out tests: `redis-server` from the system packages, on 127.0.0.1 at
// a free port, in a temporary folder, without snapshots and with `noeviction` (BullMQ's
// requirement), optionally append-only. Started and stopped by the tests themselves.
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

/** How long Redis may take to start or stop. */
const START_STOP_MS = 15_000

export interface RedisServer {
  /** `redis://127.0.0.1:<port>`. */
  url: string
  port: number
  /** Its working folder (append-only file included). */
  dir: string
  /** Stops it (SIGTERM: an append-only Redis writes its file first) and starts it again on the same port and folder. */
  restart(): Promise<void>
  /** Stops it and removes its folder. */
  stop(): Promise<void>
}

/** Starts `redis-server`; `appendOnly` persists every write (`appendfsync always`). */
export async function startRedis({ appendOnly = false } = {}): Promise<RedisServer> {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'inferpool-redis-'))
  const args = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--dir', dir,
    '--save', '',
    '--maxmemory-policy', 'noeviction',
    '--appendonly', appendOnly ? 'yes' : 'no',
    '--appendfsync', 'always',
    '--daemonize', 'no',
    '--loglevel', 'warning',
  ] // prettier-ignore
  let child = await launch(args, port)
  const stopChild = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      const exited = once(child, 'exit')
      const timer = setTimeout(() => child.kill('SIGKILL'), START_STOP_MS)
      await exited
      clearTimeout(timer)
    }
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    async restart() {
      await stopChild()
      child = await launch(args, port)
    },
    async stop() {
      await stopChild()
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

async function launch(args: string[], port: number): Promise<ChildProcess> {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr?.on('data', (chunk) => (stderr += chunk))
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (error) =>
      reject(new Error(`redis-server could not start (apt-get install redis-server): ${error.message}`)),
    )
    child.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${stderr}`)))
  })
  failed.catch(() => undefined)
  const deadline = Date.now() + START_STOP_MS
  while (Date.now() < deadline) {
    if (await Promise.race([ping(port), failed])) return child
    await sleep(50)
  }
  child.kill('SIGKILL')
  throw new Error(`redis-server did not answer on port ${port} within ${START_STOP_MS} ms`)
}

/** Whether a Redis on `port` answers PING with PONG (and is done loading its data). */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    let reply = ''
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(1000, () => done(false))
    socket.on('error', () => done(false))
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (data) => {
      reply += data
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'))
    })
  })
}

/** A TCP port free on 127.0.0.1 now. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}
