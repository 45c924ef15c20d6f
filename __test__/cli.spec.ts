import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

import { describe, expect, it } from 'vitest'

import { chunkText } from '../src/index.js'
import { TINY_BERT } from './helpers.js'

const run = promisify(execFile)
const ROOT = join(import.meta.dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')

describe('chunkText', () => {
  it('splits paragraphs and drops empty ones', () => {
    expect(chunkText('first  paragraph\nsame one\n\n\n  \nsecond\r\n\r\nthird')).toEqual([
      'first paragraph same one',
      'second',
      'third',
    ])
  })

  it('caps chunk length at sentence and word boundaries', () => {
    const paragraph = Array.from({ length: 40 }, (_, i) => `Sentence number ${i} is here.`).join(' ')
    const chunks = chunkText(paragraph, { maxChars: 100 })
    expect(chunks.length).toBeGreaterThan(5)
    for (const c of chunks) expect(c.length).toBeLessThanOrEqual(100)
    expect(chunks.join(' ')).toBe(paragraph)
    expect(chunkText('x'.repeat(250), { maxChars: 100 })).toEqual(['x'.repeat(100), 'x'.repeat(100), 'x'.repeat(50)])
  })
})

describe('inferpool embed', () => {
  it('embeds README.md with the default model into unit vectors, one line per chunk', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'inferpool-cli-')), 'x.jsonl')
    const { stderr } = await run(process.execPath, [CLI, 'embed', 'README.md', '--out', out], { cwd: ROOT })
    const lines = readFileSync(out, 'utf8').trimEnd().split('\n')
    const chunks = chunkText(readFileSync(join(ROOT, 'README.md'), 'utf8'))
    expect(lines).toHaveLength(chunks.length)
    lines.forEach((line, i) => {
      const record = JSON.parse(line)
      expect(record.id).toBe(`README.md#${i}`)
      expect(record.text).toBe(chunks[i])
      expect(record.embedding).toHaveLength(384)
      expect(Math.hypot(...record.embedding)).toBeCloseTo(1, 4)
    })
    expect(stderr).toMatch(new RegExp(`embedded ${chunks.length} chunks in [\\d.]+ s \\([\\d.]+ items/s\\)`))
  })

  it('reads standard input and writes to standard output', async () => {
    const child = run(process.execPath, [CLI, 'embed', '-', '--model', TINY_BERT], { cwd: ROOT })
    child.child.stdin!.end('a dog\n\nthe man is eating food\n')
    const { stdout } = await child
    const records = stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l))
    expect(records.map((r) => r.text)).toEqual(['a dog', 'the man is eating food'])
    expect(records.map((r) => r.id)).toEqual(['stdin#0', 'stdin#1'])
  })

  it('fails with a readable message and a non-zero exit code', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'inferpool-cli-')), 'in.txt')
    writeFileSync(file, 'hello')
    const error = await run(process.execPath, [CLI, 'embed', file, '--model', '/no/such/model'], { cwd: ROOT }).catch(
      (e) => e,
    )
    expect(error.code).toBe(1)
    expect(error.stderr).toContain('MODEL_NOT_FOUND')
    expect(error.stderr).toContain('/no/such/model')
  })
})
