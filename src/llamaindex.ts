// `inferpool/llamaindex`: a `BaseEmbedding` for LlamaIndex.TS over a pool. `llamaindex` is an
// optional peer dependency: only this entry imports it.

import { BaseEmbedding, type BaseEmbeddingOptions, type MessageContentDetail, extractSingleText } from 'llamaindex'

import { type AdapterOptions, adapterOptions, arrays } from './adapter.js'
import type { Pool } from './pool.js'
import type { EmbedOptions } from './types.js'

/** Options of {@link InferpoolEmbedding}. */
export type InferpoolEmbeddingOptions = AdapterOptions

const KEYS = ['pool', 'model', 'timeoutMs'] as const

/**
 * LlamaIndex.TS embeddings from an inferpool {@link Pool}. A batch of nodes is one pool call
 * (LlamaIndex's default sends chunks of `embedBatchSize` one after another; the pool batches
 * across calls itself), and queries are interactive, served before queued documents.
 *
 * ```ts
 * Settings.embedModel = new InferpoolEmbedding({ pool })
 * ```
 */
export class InferpoolEmbedding extends BaseEmbedding {
  readonly #pool: Pool
  readonly #call: EmbedOptions

  constructor(options: InferpoolEmbeddingOptions) {
    super()
    const { pool, call } = adapterOptions(options, KEYS)
    this.#pool = pool
    this.#call = call
    this.embedInfo = { dimensions: pool.dimension, maxTokens: pool.maxLength }
    // LlamaIndex assigns its own (one text at a time) in its constructor.
    this.getTextEmbeddings = (texts: string[]) => this.#embed(texts, 'bulk')
  }

  /** One text's vector. */
  async getTextEmbedding(text: string): Promise<number[]> {
    return (await this.#embed([text], 'bulk'))[0]
  }

  /** A query's vector, served before queued documents; `null` for content without text. */
  async getQueryEmbedding(query: MessageContentDetail): Promise<number[] | null> {
    const text = extractSingleText(query)
    return text === null ? null : (await this.#embed([text], 'interactive'))[0]
  }

  /** Every text's vector from one pool call; `progressCallback` hears how far it got. */
  async getTextEmbeddingsBatch(texts: string[], options?: BaseEmbeddingOptions): Promise<number[][]> {
    const progress = options?.progressCallback
    return this.#embed(texts, 'bulk', progress && (({ done, total }) => progress(done, total)))
  }

  async #embed(
    texts: string[],
    priority: EmbedOptions['priority'],
    onProgress?: EmbedOptions['onProgress'],
  ): Promise<number[][]> {
    return arrays(await this.#pool.embed(texts, { ...this.#call, priority, ...(onProgress ? { onProgress } : {}) }))
  }
}
