import { mkdirSync } from 'node:fs'
import { join } from 'node:path'

import { ensureDefaultModel } from '../src/model.js'
import { WIDE_HIDDEN, writeTinyBert } from './fixtures/tiny-bert.js'

/** Fetches the default model once (a no-op when cached) and writes the generated fixtures. */
export default async function setup(): Promise<void> {
  const fixtures = join(import.meta.dirname, '.fixtures')
  mkdirSync(fixtures, { recursive: true })
  writeTinyBert(join(fixtures, 'tiny-bert'))
  writeTinyBert(join(fixtures, 'tiny-bert-wide'), { hidden: WIDE_HIDDEN, seed: 7 })
  await ensureDefaultModel()
}
