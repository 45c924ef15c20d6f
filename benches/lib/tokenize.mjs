// The model's own tokenizer.json in pure JS, with inferpool's truncation rule.
import { readFileSync } from 'node:fs'

import { Tokenizer } from '@huggingface/tokenizers'

/**
 * Returns `text => ids`: [CLS] … [SEP], at most `maxLength` ids. Long texts keep their first
 * `maxLength - 2` word pieces and their [SEP], as the Rust tokenizers crate (inside inferpool)
 * truncates before adding special tokens.
 */
export function createTokenize(tokenizerPath, maxLength) {
  const tokenizer = new Tokenizer(JSON.parse(readFileSync(tokenizerPath, 'utf8')), {})
  const sep = tokenizer.token_to_id('[SEP]')
  return (text) => {
    const ids = tokenizer.encode(text, { add_special_tokens: true }).ids
    if (ids.length <= maxLength) return ids
    const kept = ids.slice(0, maxLength - 1)
    kept.push(sep)
    return kept
  }
}
