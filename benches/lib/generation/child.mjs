// A process that holds one generation contender and runs workloads on request from the parent
// (host.mjs's messages: start, run, close). Keeping contenders apart keeps their CPU time,
// threads and memory apart, and lets transformers.js load the ONNX Runtime it bundles.
import { answerParent } from '../parent.mjs'
import { runGeneration } from './measure.mjs'

let contender
let init

answerParent(handle)

async function handle(message) {
  switch (message.type) {
    case 'start':
      return start(message)
    case 'run':
      if (message.spec.mode === 'probe') return contender.probe({ ...message.spec, prompts: init.prompts })
      return runGeneration(message.spec, contender, init.prompts, init.maxNewTokens)
    case 'close':
      await contender?.close()
      return null
    default:
      throw new Error(`unknown message ${message.type}`)
  }
}

async function start(message) {
  init = message
  // Imported on demand, so that a process loads only its own contender's ONNX Runtime.
  const { create } = await import(`./${message.contender}.mjs`)
  contender = await create(message)
  await warmUp(message.prompts)
  return { describe: contender.describe }
}

/**
 * Loads, compiles and fills the caches and arenas before anything is timed: the longest and the
 * shortest prompt for a few tokens, and for a pool every prompt at once for two.
 */
async function warmUp(prompts) {
  const byLength = [...prompts].sort((a, b) => a.length - b.length)
  for (const prompt of [byLength.at(-1), byLength[0]]) await contender.generate(prompt, 4)
  if (contender.counters) await Promise.all(prompts.map((prompt) => contender.generate(prompt, 2)))
}
