// `inferpool/langchain`: an `Embeddings` for LangChain.js over a pool. `@langchain/core` is an
// optional peer dependency: only this entry imports it.

import { Embeddings, type EmbeddingsParams } from '@langchain/core/embeddings'

import { type AdapterOptions, adapterOptions, arrays } from './adapter.js'
import type { Pool } from './pool.js'
import type { EmbedOptions } from './types.js'

/** Options of {@link InferpoolEmbeddings}: the pool's, and LangChain's retry and concurrency. */
export interface InferpoolEmbeddingsParams extends AdapterOptions, EmbeddingsParams {}

const KEYS = ['pool', 'model', 'timeoutMs', 'maxConcurrency', 'maxRetries', 'onFailedAttempt'] as const

/**
 * LangChain.js embeddings from an inferpool {@link Pool}: `embedDocuments` is one pool call
 * (bulk priority), `embedQuery` one interactive call, so queries overtake document ingestion.
 * A call the pool refuses as `OVERLOADED` is retried with LangChain's back-off (`maxRetries`,
 * default 6); other errors are thrown at once.
 *
 * ```ts
 * const store = await MemoryVectorStore.fromTexts(texts, metadata, new InferpoolEmbeddings({ pool }))
 * ```
 */
export class InferpoolEmbeddings extends Embeddings {
  readonly #pool: Pool
  readonly #call: EmbedOptions

  constructor(params: InferpoolEmbeddingsParams) {
    const { pool, call } = adapterOptions(params, KEYS)
    super({
      maxConcurrency: params.maxConcurrency,
      maxRetries: params.maxRetries,
      onFailedAttempt: params.onFailedAttempt ?? retryOverloaded,
    })
    this.#pool = pool
    this.#call = call
  }

  /** One vector per document, in order, from one pool call. */
  async embedDocuments(documents: string[]): Promise<number[][]> {
    const rows = await this.caller.call(() => this.#pool.embed(documents, { ...this.#call, priority: 'bulk' }))
    return arrays(rows)
  }

  /** The query's vector, served before queued documents. */
  async embedQuery(document: string): Promise<number[]> {
    const [row] = await this.caller.call(() => this.#pool.embed([document], { ...this.#call, priority: 'interactive' }))
    return Array.from(row)
  }
}

/** Lets LangChain retry a call only when the pool refused it as `OVERLOADED`. */
function retryOverloaded(error: unknown): void {
  if ((error as { code?: unknown } | null)?.code !== 'OVERLOADED') throw error
}
