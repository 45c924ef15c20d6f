/** Options of {@link chunkText}. */
export interface ChunkOptions {
  /** Longest chunk in characters (UTF-16 code units). Default 1000. */
  maxChars?: number
}

function splitLong(paragraph: string, maxChars: number): string[] {
  const chunks: string[] = []
  let current = ''
  const push = () => {
    if (current) chunks.push(current)
    current = ''
  }
  // Sentences first, then words, then hard cuts for single words longer than the cap.
  for (const sentence of paragraph.split(/(?<=[.!?])\s+/)) {
    for (const word of sentence.split(/\s+/)) {
      if (!word) continue
      if (word.length > maxChars) {
        push()
        for (let i = 0; i < word.length; i += maxChars) chunks.push(word.slice(i, i + maxChars))
        continue
      }
      if (current.length + 1 + word.length > maxChars) push()
      current = current ? `${current} ${word}` : word
    }
    if (current.length >= maxChars * 0.5) push()
  }
  push()
  return chunks
}

/**
 * Splits text into chunks for embedding: one per paragraph (blank-line separated), with
 * whitespace collapsed; paragraphs longer than `maxChars` are cut at sentence, then word
 * boundaries. Empty paragraphs are dropped.
 */
export function chunkText(text: string, options: ChunkOptions = {}): string[] {
  const maxChars = options.maxChars ?? 1000
  if (!Number.isInteger(maxChars) || maxChars < 1) throw new RangeError('maxChars must be a positive integer')
  const chunks: string[] = []
  for (const raw of text.split(/\r?\n\s*\r?\n/)) {
    const paragraph = raw.replace(/\s+/g, ' ').trim()
    if (!paragraph) continue
    if (paragraph.length <= maxChars) chunks.push(paragraph)
    else chunks.push(...splitLong(paragraph, maxChars))
  }
  return chunks
}
