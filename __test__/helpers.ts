import { join } from 'node:path'

/** The generated tiny model (written by global-setup.ts). */
export const TINY_BERT = join(import.meta.dirname, '.fixtures', 'tiny-bert')
/** A second generated model, larger and wider (written by global-setup.ts). */
export const TINY_BERT_WIDE = join(import.meta.dirname, '.fixtures', 'tiny-bert-wide')
