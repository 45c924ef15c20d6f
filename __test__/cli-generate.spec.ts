/**
 * `inferpool generate` as a child process on the tiny T5: its JSON Lines against the
 * independent reference decoder, from a file and from standard input, the summary line, and
 * its refusals.
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { type Generation, PROMPTS, createGenerationReference } from './fixtures/t5-reference.js'
import { writeTinyT5 } from './fixtures/tiny-t5.js'
import { TINY_BERT } from './helpers.js'

const run = promisify(execFile)
const ROOT = join(import.meta.dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const MAX_NEW_TOKENS = 24

interface Record {
  id: string
  prompt: string
  text: string
  finishReason: string
}

const records = (jsonl: string): Record[] =>
  jsonl
    .trimEnd()
    .split('\n')
    .map((line) => JSON.parse(line) as Record)

describe('inferpool generate', () => {
  const root = mkdtempSync(join(tmpdir(), 'inferpool-cli-generate-'))
  const model = join(root, 't5')
  const expected = new Map<string, Generation>()

  beforeAll(async () => {
    writeTinyT5(model, { layout: 'merged' })
    const reference = await createGenerationReference(model)
    try {
      for (const prompt of PROMPTS)
        expected.set(prompt, await reference.generate(prompt, { maxNewTokens: MAX_NEW_TOKENS }))
    } finally {
      await reference.release()
    }
  }, 60_000)
  afterAll(() => rmSync(root, { recursive: true, force: true }))

  it('writes the reference texts of a file, in input order, and a summary line', async () => {
    // Every prompt, with blank lines between some: ids are line indices.
    const lines = PROMPTS.flatMap((prompt, i) => (i % 7 === 3 ? ['', prompt] : [prompt]))
    const file = join(root, 'prompts.txt')
    writeFileSync(file, `${lines.join('\n')}\n`)
    const out = join(root, 'out.jsonl')
    const { stderr } = await run(
      process.execPath,
      [
        CLI,
        'generate',
        file,
        '--model',
        model,
        '--max-new-tokens',
        String(MAX_NEW_TOKENS),
        '--out',
        out,
        '--cpu-workers',
        '1',
      ],
      { cwd: ROOT },
    )
    const got = records(readFileSync(out, 'utf8'))
    expect(got.map((r) => r.id)).toEqual(lines.flatMap((line, i) => (line === '' ? [] : [`${file}#${i}`])))
    expect(got).toEqual(
      got.map((r, i) => ({
        id: r.id,
        prompt: PROMPTS[i],
        text: expected.get(PROMPTS[i])!.text,
        finishReason: expected.get(PROMPTS[i])!.finishReason,
      })),
    )
    expect(new Set(got.map((r) => r.finishReason))).toEqual(new Set(['eos', 'length']))
    const tokens = PROMPTS.reduce((sum, p) => sum + expected.get(p)!.tokens.length, 0)
    expect(stderr).toMatch(
      new RegExp(
        `^generated ${PROMPTS.length} texts \\(${tokens} tokens\\) in [\\d.]+ s \\([\\d.]+ items/s, [\\d.]+ tokens/s\\)\\n$`,
      ),
    )
  })

  it('reads standard input, writes standard output, and ends texts at --stop', async () => {
    const prompts = [PROMPTS[2], PROMPTS[4], PROMPTS[9]]
    const stop = expected.get(PROMPTS[4])!.text.trim().slice(4, 7)
    const child = run(
      process.execPath,
      [CLI, 'generate', '-', '-m', model, '--max-new-tokens', String(MAX_NEW_TOKENS), '--stop', stop, '--no-progress'],
      { cwd: ROOT },
    )
    child.child.stdin!.end(`${prompts.join('\r\n')}\r\n`)
    const { stdout } = await child
    const got = records(stdout)
    expect(got.map((r) => r.id)).toEqual(['stdin#0', 'stdin#1', 'stdin#2'])
    expect(got.map((r) => r.prompt)).toEqual(prompts)
    const cut = expected.get(PROMPTS[4])!.text
    expect(got[1]).toMatchObject({ text: cut.slice(0, cut.indexOf(stop)), finishReason: 'stop' })
    for (const i of [0, 2]) {
      const want = expected.get(prompts[i])!
      const at = want.text.indexOf(stop)
      expect(got[i].text).toBe(at < 0 ? want.text : want.text.slice(0, at))
    }
  })

  it('refuses bad options and models with a readable message and a non-zero exit code', async () => {
    const file = join(root, 'one.txt')
    writeFileSync(file, 'hello\n')
    const cases: [string[], RegExp][] = [
      [[], /required option '-m, --model <path>' not specified/],
      [['-m', 'default'], /INVALID_INPUT: the built-in default model is an embedding model/],
      [['-m', TINY_BERT], /INVALID_INPUT: .*tiny-bert is an embedding model/],
      [['-m', model, '--temperature', 'warm'], /option '--temperature <t>' argument 'warm' is invalid/],
      [['-m', model, '--top-p', '0'], /option '--top-p <p>' argument '0' is invalid. expected a number above 0/],
      [['-m', model, '--max-new-tokens', '0'], /option '--max-new-tokens <n>' argument '0' is invalid/],
      [['-m', model, '--seed', '1.5'], /option '--seed <n>' argument '1.5' is invalid/],
      [['-m', model, '--stop', ''], /option '--stop <text>' argument '' is invalid/],
      [['-m', model, '--min-new-tokens', '9', '--max-new-tokens', '3'], /--min-new-tokens \(9\) exceeds/],
      [['-m', join(root, 'nothing')], /MODEL_NOT_FOUND/],
    ]
    for (const [args, message] of cases) {
      const error = await run(process.execPath, [CLI, 'generate', file, ...args], { cwd: ROOT }).catch((e) => e)
      expect(error.code, args.join(' ')).toBe(1)
      expect(error.stderr).toMatch(message)
      expect(error.stdout).toBe('')
    }
  })
})
