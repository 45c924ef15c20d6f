// inferpool against the ways Node users embed text today, with the same model (the default
// all-MiniLM-L6-v2 q4), on the same corpus, in one run:
//   inferpool · piscina worker threads with onnxruntime-node · transformers.js on the main thread
//   · one onnxruntime-node session on the main thread · the ceiling of a bare session.
//
// Usage: npm run bench [-- --quick] [-- --only inferpool,piscina,transformers,ort-main,ceiling]
//                      [-- --workloads bulk,concurrent,singles,trickle,arrivals]
//                      [-- --baseline /abs/path/to/other/dist]
//   --quick     every workload ~10× smaller, to check the script
//   --only      the contenders to run, comma-separated (default: all but ort-main-idle, which
//               runs only when named: the main-thread session without its threads' spinning)
//   --workloads the workloads to run, comma-separated (default: all but arrivals, which runs
//               only when named: single-text calls at random moments, 100 a second on average)
//   --baseline  also runs inferpool from another build's dist folder, copied inside this
//               checkout so that its imports resolve (contender
//               inferpool-baseline), to compare two versions in one run
//
// benny is the harness; each case is a whole workload of seconds, so it runs once and the table
// comes from measurements taken inside the contender's own process (workloads.mjs).
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'

import { add, complete, cycle, suite } from 'benny'

import { CONTENDERS } from './lib/contenders.mjs'
import { startContender } from './lib/host.mjs'
import { machine, outputCheck, ratios, table } from './lib/report.mjs'
import { prepareRun } from './lib/run.mjs'
import { createTokenize } from './lib/tokenize.mjs'

const CHECK_THRESHOLD = 0.999

// Run each case exactly once: one cycle of one iteration, one sample. (A minTime of 0 would be
// replaced by benchmark.js's default of 50 ms, which repeats cases shorter than that.)
const ONCE = { initCount: 1, minSamples: 1, minTime: 1e-9, maxTime: 0, delay: 0 }

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    workloads: { type: 'string' },
    baseline: { type: 'string' },
  },
})
if (values.baseline) process.env.INFERPOOL_BENCH_BASELINE = resolve(values.baseline)
const contenders = select(values.only)
const started = performance.now()

const prepared = await prepareRun(values.quick)
const { model, corpus, corpusLine, init } = prepared
const workloads = pickWorkloads(prepared.workloads, values.workloads)
const ceilingWorkload = {
  id: 'ceiling',
  label: `ceiling: ${corpus.texts.length} texts pre-tokenized, sorted by length, batches of 16`,
}

const rows = []
const checks = []
const descriptions = []
let reference

// benny calls every case function once while it builds the suite, to see what it returns; the
// workloads must only run when the suite does. This entry has the shape of benny's own cycle()
// and complete(): it hooks the suite's start event.
let running = false
const armOnStart = async () => (suiteObj) => suiteObj.on('start', () => (running = true))

// The output check compares every contender with inferpool; fetch inferpool's vectors first when
// it is not one of the contenders.
if (!contenders.some(({ id }) => id === 'inferpool') && contenders.some(({ peer }) => peer)) {
  const host = await startContender('inferpool', init)
  reference = host.info.check
  await host.close()
}

await suite(
  'inferpool vs the Node.js ways to embed',
  armOnStart,
  ...contenders.flatMap((contender) =>
    contender.id === 'ceiling' ? [ceilingCase(contender)] : contenderCases(contender),
  ),
  cycle(() => {
    const { contender, workload, result } = rows.at(-1) ?? {}
    if (result) console.log(`  ${contender.label} · ${workload.label}: ${result.itemsPerSecond.toFixed(1)} items/s`)
  }),
  complete(report),
)

/** One case per workload; the first starts (and warms up) the contender's process, the last closes it. */
function contenderCases(contender) {
  let host
  let failure
  return workloads.map((workload, i) =>
    add(
      `${contender.label} · ${workload.label}`,
      () => async () => {
        if (!running) return
        if (failure) return void rows.push({ contender, workload, error: failure })
        try {
          if (i === 0) {
            host = await startContender(contender.id, init)
            descriptions.push(`- ${contender.label}: ${host.info.describe}`)
            if (contender.id === 'inferpool') reference = host.info.check
            else checks.push({ contender, vectors: host.info.check })
          }
          rows.push({ contender, workload, result: await host.run(workload) })
          if (i === workloads.length - 1) await host.close()
        } catch (error) {
          failure = error
          rows.push({ contender, workload, error })
          console.error(error)
          process.exitCode = 1
          host?.close().catch(() => undefined)
        }
      },
      ONCE,
    ),
  )
}

/** The workloads `list` names (comma-separated ids), in their usual order; without a list, all but those run on request. */
function pickWorkloads(all, list) {
  if (!list) return all.filter((w) => !w.onRequest)
  const ids = list.split(',').map((id) => id.trim())
  const unknown = ids.filter((id) => !all.some((w) => w.id === id))
  if (unknown.length > 0) {
    throw new Error(`unknown workload ${unknown.join(', ')}; known: ${all.map((w) => w.id).join(', ')}`)
  }
  return all.filter((w) => ids.includes(w.id))
}

function ceilingCase(contender) {
  return add(
    `${contender.label} · ${ceilingWorkload.label}`,
    () => async () => {
      if (!running) return
      try {
        const host = await startContender('ceiling', init)
        const result = await host.run(ceilingWorkload)
        await host.close()
        descriptions.push(`- ${contender.label}: ${result.describe}`)
        rows.push({ contender, workload: ceilingWorkload, result })
      } catch (error) {
        rows.push({ contender, workload: ceilingWorkload, error })
        console.error(error)
        process.exitCode = 1
      }
    },
    ONCE,
  )
}

function report() {
  const order = [...workloads, ceilingWorkload]
  const position = ({ workload, contender }) =>
    order.indexOf(workload) * CONTENDERS.length + CONTENDERS.indexOf(contender)
  rows.sort((a, b) => position(a) - position(b))
  const peers = CONTENDERS.filter(({ peer }) => peer).map(({ label }) => label)
  console.log(`\n## Results (${values.quick ? '--quick run, workloads ~10× smaller' : 'full run'})\n`)
  console.log(corpusLine)
  console.log('')
  console.log(table(rows))
  const ratioLines = ratios(rows, workloads)
  if (ratioLines.length > 0) {
    console.log(`\ninferpool ÷ best pure-JS peer (${peers.join('; ')}), per workload:`)
    for (const line of ratioLines) console.log(line)
  }
  if (reference && checks.length > 0) {
    const countTokens = createTokenize(model.tokenizer, Infinity)
    const truncated = init.checkTexts.map((text) => countTokens(text).length > model.maxLength)
    console.log(`\noutput check, cosine against inferpool on ${init.checkTexts.length} texts:`)
    for (const line of outputCheck(checks, reference, truncated, CHECK_THRESHOLD)) console.log(line)
  }
  console.log('\ncontenders:')
  for (const line of descriptions) console.log(line)
  console.log(machine())
  console.log(`whole run: ${((performance.now() - started) / 1000).toFixed(0)} s`)
}

function select(only) {
  if (!only) {
    return CONTENDERS.filter((contender) => !contender.onRequest && (!contender.baseline || values.baseline))
  }
  const ids = only.split(',').map((id) => id.trim())
  const unknown = ids.filter((id) => !CONTENDERS.some((contender) => contender.id === id))
  if (unknown.length > 0) {
    throw new Error(`unknown contender ${unknown.join(', ')}; choose from ${CONTENDERS.map(({ id }) => id).join(', ')}`)
  }
  return CONTENDERS.filter((contender) => ids.includes(contender.id))
}
