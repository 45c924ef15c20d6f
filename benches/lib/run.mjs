// What every embedding benchmark run starts from: the default model, the corpus (full, or ~10×
// smaller with --quick), its description line, the workloads, and what a contender is given.
import { buildCorpus, checkTexts, describeCorpus } from './corpus.mjs'
import { defaultModel } from './model.mjs'
import { planWorkloads } from './workloads.mjs'

const FULL_CORPUS = 4288

/** Prepares a run and prints its corpus line. */
export async function prepareRun(quick) {
  const model = await defaultModel()
  const corpus = buildCorpus(quick ? Math.ceil(FULL_CORPUS / 10) : FULL_CORPUS)
  const corpusLine = describeCorpus(corpus, model.tokenizer, model.maxLength)
  console.log(corpusLine)
  const workloads = planWorkloads(corpus.texts.length, quick)
  const init = { model, texts: corpus.texts, checkTexts: checkTexts(corpus.texts) }
  return { model, corpus, corpusLine, workloads, init }
}
