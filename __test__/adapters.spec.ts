import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'

import { MemoryVectorStore } from '@langchain/classic/vectorstores/memory'
import { Document, Settings, VectorStoreIndex } from 'llamaindex'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { Pool } from '../src/index.js'
import { InferpoolEmbeddings } from '../src/langchain.js'
import { InferpoolEmbedding } from '../src/llamaindex.js'
import { TINY_BERT } from './helpers.js'

const run = promisify(execFile)
const ROOT = join(import.meta.dirname, '..')

const FACTS = [
  'Paris is the capital and largest city of France.',
  'Bananas are a yellow fruit rich in potassium.',
  'The stock market fell sharply on Monday.',
  'A violin is a string instrument played with a bow.',
  'Mount Everest is the highest mountain on Earth.',
]

/** Calls the pool has answered for its default model (its request-duration histogram count). */
function calls(pool: Pool): number {
  return Number(/^inferpool_request_duration_seconds_count\{model="default"\} (\d+)$/m.exec(pool.metrics())![1])
}

describe('the framework adapters', () => {
  let pool: Pool
  beforeAll(async () => {
    pool = await Pool.create({ cpuWorkers: 2 })
  })
  afterAll(() => pool?.close())

  it('LangChain: a MemoryVectorStore built with it finds the matching document', async () => {
    const embeddings = new InferpoolEmbeddings({ pool })
    const store = await MemoryVectorStore.fromTexts(
      FACTS,
      FACTS.map((_, id) => ({ id })),
      embeddings,
    )
    const [best] = await store.similaritySearch('Which city is the capital of France?', 1)
    expect(best.pageContent).toBe(FACTS[0])
    const [fruit] = await store.similaritySearch('something sweet to eat', 1)
    expect(fruit.metadata.id).toBe(1)
  })

  it('LangChain: embedDocuments is one pool call, embedQuery gives the pool vector', async () => {
    const embeddings = new InferpoolEmbeddings({ pool })
    const before = calls(pool)
    const vectors = await embeddings.embedDocuments(FACTS)
    expect(calls(pool) - before).toBe(1)
    expect(vectors).toEqual((await pool.embed(FACTS)).map((row) => Array.from(row)))
    expect(await embeddings.embedQuery(FACTS[2])).toEqual(vectors[2])
  })

  it('LangChain: only OVERLOADED is retried; other errors are thrown at once', async () => {
    const embeddings = new InferpoolEmbeddings({ pool, maxRetries: 6 })
    const started = performance.now()
    const error = await embeddings.embedDocuments([42 as unknown as string]).catch((e) => e)
    expect(error.code).toBe('INVALID_INPUT')
    expect(performance.now() - started).toBeLessThan(500) // no back-off
    const small = await Pool.create({ model: TINY_BERT, cpuWorkers: 1, maxQueuedItems: 2 })
    try {
      let attempts = 0
      const retried = new InferpoolEmbeddings({
        pool: small,
        maxRetries: 1,
        onFailedAttempt: (e: { code?: string }) => {
          attempts++
          if (e.code !== 'OVERLOADED') throw e
        },
      })
      expect((await retried.embedDocuments(['a', 'b', 'c']).catch((e) => e)).code).toBe('OVERLOADED')
      expect(attempts).toBe(2)
    } finally {
      await small.close()
    }
    expect(() => new InferpoolEmbeddings({ pool, model: 'nope' })).toThrow(/unknown model "nope"/)
    expect(() => new InferpoolEmbeddings({ pool, colour: 'red' } as never)).toThrow(/unknown option "colour"/)
  })

  it('LlamaIndex: indexing 100 documents is one pool call, and retrieval finds the match', async () => {
    Settings.embedModel = new InferpoolEmbedding({ pool })
    const documents = Array.from(
      { length: 100 },
      (_, i) => new Document({ text: `Inventory note ${i}: item ${i} sits on shelf ${i % 7}.`, id_: `note-${i}` }),
    )
    documents[42] = new Document({ text: FACTS[0], id_: 'paris' })
    const before = calls(pool)
    const index = await VectorStoreIndex.fromDocuments(documents)
    expect(calls(pool) - before).toBe(1)
    const [best] = await index.asRetriever({ similarityTopK: 1 }).retrieve({ query: 'the capital of France' })
    expect(best.node.sourceNode?.nodeId).toBe('paris')
  })

  it('LlamaIndex: batches report progress, queries and texts give the pool vectors', async () => {
    const model = new InferpoolEmbedding({ pool })
    expect(model.embedInfo).toEqual({ dimensions: 384, maxTokens: pool.maxLength })
    const seen: [number, number][] = []
    const texts = Array.from({ length: 300 }, (_, i) => `progress text ${i}`)
    const before = calls(pool)
    const vectors = await model.getTextEmbeddingsBatch(texts, {
      progressCallback: (done, total) => seen.push([done, total]),
    })
    expect(calls(pool) - before).toBe(1)
    expect(vectors).toHaveLength(300)
    expect(seen.at(-1)).toEqual([300, 300])
    const [expected] = await pool.embed([FACTS[3]])
    expect(await model.getQueryEmbedding({ type: 'text', text: FACTS[3] })).toEqual(Array.from(expected))
    expect(await model.getTextEmbedding(FACTS[3])).toEqual(Array.from(expected))
  })
})

describe('the main entry without the optional packages', () => {
  // A child process where @langchain/*, llamaindex and fastify cannot be resolved (a resolve
  // hook for import, a patched resolver for require), which lists what was asked for.
  const blocker = `
    const Module = require('node:module')
    const blocked = (s) => /^(@langchain\\/|llamaindex|fastify)/.test(s)
    const asked = (globalThis.__asked = [])
    const resolve = Module._resolveFilename
    Module._resolveFilename = function (request, ...rest) {
      if (blocked(request)) { asked.push(request); const e = new Error('blocked ' + request); e.code = 'MODULE_NOT_FOUND'; throw e }
      return resolve.call(this, request, ...rest)
    }
    const hooks = 'export async function resolve(s, c, next) { if (/^(@langchain\\\\/|llamaindex|fastify)/.test(s)) { const e = new Error("blocked " + s); e.code = "ERR_MODULE_NOT_FOUND"; throw e } return next(s, c) }'
    Module.register('data:text/javascript,' + encodeURIComponent(hooks))
  `
  const node = (script: string) => run(process.execPath, ['-e', blocker + script], { cwd: ROOT }).catch((e) => e)

  it('import and require of inferpool work, and load neither fastify nor a framework', async () => {
    const { stdout } = await node(`
      const cjs = require('inferpool')
      import('inferpool').then(async (esm) => {
        const langchain = await import('inferpool/langchain').then(() => 'loaded', (e) => e.code + ' ' + e.message)
        const server = await import('inferpool/server')
        const pool = await esm.Pool.create({ model: ${JSON.stringify(TINY_BERT)}, cpuWorkers: 1 })
        const serve = await server.createServer(pool).then(() => 'served', (e) => e.code + ' ' + e.message)
        await pool.close()
        console.log(JSON.stringify({
          cjs: typeof cjs.Pool,
          esm: typeof esm.Pool,
          asked: globalThis.__asked,
          langchain,
          serve,
        }))
      })
    `)
    const result = JSON.parse(stdout)
    expect(result.cjs).toBe('function')
    expect(result.esm).toBe('function')
    // The server is a subpath of its own; without its peer fastify it says what to install.
    expect(result.serve).toMatch(/^INVALID_INPUT .*npm install fastify@/)
    expect(result.asked).toEqual([])
    // The adapter itself needs its framework, and says so.
    expect(result.langchain).toMatch(/^ERR_MODULE_NOT_FOUND blocked @langchain\/core\/embeddings/)
  })
})
