// A process that holds one contender and runs workloads on request from the parent (host.mjs).
// Keeping contenders apart keeps their CPU time, threads and memory apart, and lets transformers.js
// load the ONNX Runtime it bundles (two versions of the library cannot share a process).
import { answerParent } from './parent.mjs'
import { runWorkload } from './workloads.mjs'

let contender
let model
let texts

answerParent(handle)

async function handle(message) {
  switch (message.type) {
    case 'start':
      return start(message)
    case 'run':
      if (message.spec.id === 'ceiling') {
        const { measureCeiling } = await import('./ceiling.mjs')
        return measureCeiling(model, texts)
      }
      return runWorkload(message.spec, contender.embed, texts)
    case 'close':
      await contender?.close()
      return null
    default:
      throw new Error(`unknown message ${message.type}`)
  }
}

async function start(message) {
  model = message.model
  texts = message.texts
  if (message.contender === 'ceiling') return {}
  // Imported on demand, so that a process loads only its own contender's ONNX Runtime.
  const { create } = await import(`./contenders/${message.contender}.mjs`)
  contender = await create(model)
  await warmUp(contender.embed)
  const check = await contender.embed(message.checkTexts)
  // Copies, not views: a view would carry its whole underlying buffer across.
  return { describe: contender.describe, check: check.map((vector) => vector.slice()) }
}

/** Loads, compiles and fills every cache the contender has before anything is timed. */
async function warmUp(embed) {
  await embed(texts.slice(0, 160))
  await Promise.all(texts.slice(0, 64).map((text) => embed([text])))
}
