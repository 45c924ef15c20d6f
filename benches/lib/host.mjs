// The parent's side of a contender process (child.mjs): start it, ask it to run workloads, close it.
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const CHILD = fileURLToPath(new URL('./child.mjs', import.meta.url))

/**
 * Starts the process for `contender`, loads and warms it up; resolves with
 * `{ info, run(spec), close() }` once it is ready. `child`: another script speaking the same
 * messages (default child.mjs); `execArgv`: the child's Node options (default: the parent's).
 */
export async function startContender(contender, init, { child: script = CHILD, execArgv } = {}) {
  const child = fork(script, [], {
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    ...(execArgv === undefined ? {} : { execArgv }),
  })
  const pending = new Map()
  let nextId = 0
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.on('message', ({ id, ok, value, error }) => {
    const call = pending.get(id)
    pending.delete(id)
    if (ok) call.resolve(value)
    else call.reject(new Error(`${contender}: ${error}`))
  })
  child.on('exit', (code, signal) => {
    for (const call of pending.values()) call.reject(new Error(`${contender}: its process exited (${signal ?? code})`))
    pending.clear()
  })
  const call = (message) =>
    new Promise((resolve, reject) => {
      const id = nextId++
      pending.set(id, { resolve, reject })
      child.send({ id, ...message })
    })
  try {
    const info = await call({ type: 'start', contender, ...init })
    return {
      info,
      run: (spec) => call({ type: 'run', spec }),
      close: async () => {
        await call({ type: 'close' })
        await exited
      },
    }
  } catch (error) {
    child.kill()
    throw error
  }
}
