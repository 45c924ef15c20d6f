import { mkdirSync } from 'node:fs'
import { join } from 'node:path'

import { ensureDefaultModel } from '../src/model.js'
import { writeTinyBert } from './fixtures/tiny-bert.js'

/** Fetches the default model once (a no-op when cached) and writes the generated fixtures. */
export default async function setup(): Promise<void> {
  const fixtures = join(import.meta.dirname, '.fixtures')
  mkdirSync(fixtures, { recursive: true })
  writeTinyBert(join(fixtures, 'tiny-bert'))
  await ensureDefaultModel()
}
