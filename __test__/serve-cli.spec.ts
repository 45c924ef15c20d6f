import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'

import { afterEach, describe, expect, it } from 'vitest'

import { TINY_BERT } from './helpers.js'

const ROOT = join(import.meta.dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const KEY = 'serve-cli-key'

/** Starts `inferpool serve` on a free port; resolves with the process and its base URL. */
async function serve(args: string[]): Promise<{ child: ChildProcess; base: string; stderr: () => string }> {
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', ...args], {
    cwd: ROOT,
    env: { ...process.env, INFERPOOL_API_KEY: KEY },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr!.setEncoding('utf8')
  const base = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no address within 60 s: ${stderr}`)), 60_000)
    child.stderr!.on('data', (chunk: string) => {
      stderr += chunk
      const match = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr)
      if (match !== null) {
        clearTimeout(timer)
        resolve(match[1])
      }
    })
    child.once('exit', (code) => reject(new Error(`exited with ${code}: ${stderr}`)))
  })
  return { child, base, stderr: () => stderr }
}

const embeddings = (base: string, input: string[]) =>
  fetch(`${base}/v1/embeddings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ input, encoding_format: 'float' }),
  })

describe('inferpool serve', () => {
  let child: ChildProcess | undefined
  afterEach(() => {
    if (child?.exitCode === null) child.kill('SIGKILL')
  })

  it('serves on the loopback interface with the API key from the environment', async () => {
    const started = await serve(['--model', `tiny=${TINY_BERT}`])
    child = started.child
    expect(started.stderr()).toContain('models: tiny; API key required')
    const ok = await embeddings(started.base, ['a dog'])
    expect(ok.status).toBe(200)
    const body = (await ok.json()) as { model: string; data: { embedding: number[] }[] }
    expect(body.model).toBe('tiny')
    expect(body.data[0].embedding).toHaveLength(16)
    const refused = await fetch(`${started.base}/v1/models`)
    expect(refused.status).toBe(401)
    child.kill('SIGTERM')
    const [code] = await once(child, 'exit')
    expect(code).toBe(0)
  })

  it('answers the requests in flight on SIGTERM, then exits', async () => {
    const started = await serve(['--cpu-workers', '1'])
    child = started.child
    const texts = Array.from({ length: 300 }, (_, i) => `text ${i} of a request that is in flight when asked to stop`)
    let answered = false
    const inFlight = embeddings(started.base, texts).finally(() => (answered = true))
    await new Promise((resolve) => setTimeout(resolve, 100))
    const exited = once(child, 'exit')
    expect(answered).toBe(false)
    child.kill('SIGTERM')
    const response = await inFlight
    expect(response.status).toBe(200)
    const body = (await response.json()) as { data: { embedding: number[] }[] }
    expect(body.data).toHaveLength(300)
    for (const { embedding } of body.data) expect(embedding).toHaveLength(384)
    const [code] = await exited
    expect(code).toBe(0)
    expect(started.stderr()).toMatch(/SIGTERM: draining\ninferpool: stopped\n$/)
    // Nothing listens any more.
    expect(await embeddings(started.base, ['late']).catch((e: Error) => e.message)).toBe('fetch failed')
  })
})
