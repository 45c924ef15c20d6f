// Seq2seq generation: inferpool against the ways Node users generate with a T5 export today, on
// the same model folder and the same prompts, in one run:
//   inferpool (every prompt at once; and one call at a time) · one onnxruntime-node session pair
//   on the main thread, one prompt at a time with the key/value cache · the transformers.js
//   text2text-generation pipeline, one prompt at a time.
// Then the time to first token of a prompt that arrives while all the others decode.
//
// Usage: npm run build && npm run bench:generate [-- --quick] [-- --keep] [-- --only ids]
//   --quick  the tiny test model, 8 prompts, 8 new tokens: checks the script in seconds
//   --keep   keep the generated model in the temp folder and reuse it on the next run
//   --only   the contenders to run, comma-separated (default: all):
//            inferpool, inferpool-1w, inferpool-serial, ort-main, transformers
//
// The model is a random-weight T5 of t5-small size (__test__/fixtures/tiny-t5.ts, through tsx),
// written at start into the temp folder: an Optimum export (encoder + merged decoder, fp32) whose
// EOS never wins, so every prompt generates exactly its token limit. Decoding is greedy
// everywhere, so every contender should give the same tokens (checked at the end). Each contender
// runs in a process of its own (host.mjs): transformers.js bundles an onnxruntime-node that
// cannot share a process with the project's. A benchmark reports; it exits 0 unless a contender
// fails.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

import { Tokenizer } from '@huggingface/tokenizers'

import { T5_SEED, T5_SMALL_SIZE, TINY_T5_DEFAULTS, t5Vocabulary, writeTinyT5 } from '../__test__/fixtures/tiny-t5.ts'
import { startContender } from './lib/host.mjs'
import { machine } from './lib/report.mjs'
import { mean } from './lib/stats.mjs'
import { seeded } from './lib/random.mjs'

const CHILD = fileURLToPath(new URL('./lib/generation/child.mjs', import.meta.url))

const TARGET_RATIO = 8
const TARGET_STEPS = 2
const TARGET_LOOP_MS = 5

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    only: { type: 'string' },
  },
})
const quick = values.quick
const PROMPTS = quick ? 8 : 64
const MAX_NEW_TOKENS = quick ? 8 : 64
/** New tokens of the prompts decoding around the probe: enough steps to measure in, even with --quick. */
const PROBE_TOKENS = Math.max(MAX_NEW_TOKENS, 64)
const PROBE_ROUNDS = 3
const WORDS_MIN = 5
const WORDS_MAX = 120

const cores = availableParallelism()
const CONTENDERS = [
  {
    id: 'inferpool',
    label: 'inferpool',
    module: 'inferpool',
    runs: [
      { mode: 'concurrent', how: `${PROMPTS} prompts at once, one generateStream call each` },
      { mode: 'concurrent', whole: true, how: `${PROMPTS} prompts at once, one generate call each` },
      { mode: 'probe' },
    ],
  },
  // All the cores to one session instead of one session per core or so (the default).
  {
    id: 'inferpool-1w',
    label: `inferpool, 1 worker × ${cores} threads`,
    module: 'inferpool',
    options: { cpuWorkers: 1, intraOpThreads: cores },
    runs: [{ mode: 'concurrent', how: `${PROMPTS} prompts at once, one generateStream call each` }],
  },
  {
    id: 'inferpool-serial',
    label: 'inferpool',
    module: 'inferpool',
    runs: [{ mode: 'serial', how: 'one prompt at a time (generateStream, each awaited)' }],
  },
  {
    id: 'ort-main',
    label: 'onnxruntime-node, main thread',
    module: 'ort-main',
    peer: true,
    runs: [{ mode: 'serial', how: 'one prompt at a time, greedy loop with the cache' }],
  },
  {
    id: 'transformers',
    label: 'transformers.js',
    module: 'transformers',
    peer: true,
    runs: [{ mode: 'serial', how: 'one prompt at a time, text2text-generation pipeline' }],
  },
]

const contenders = select(values.only)
const started = performance.now()

// The model.
const sizes = quick ? {} : T5_SMALL_SIZE
const modelOptions = { layout: 'merged', onnxDir: true, seed: T5_SEED, noEos: true, ...sizes }
const { folder, generatedIn } = prepareModel()
const onnxFiles = readdirSync(join(folder, 'onnx'))
  .map((file) => `${file} ${(statSync(join(folder, 'onnx', file)).size / 1e6).toFixed(0)} MB`)
  .join(', ')
const shape = { ...TINY_T5_DEFAULTS, ...sizes }
const modelLine =
  `model: random-weight T5, ${quick ? 'tiny' : 't5-small size'} (d_model ${shape.dModel}, ` +
  `${shape.layers}+${shape.layers} layers, ${shape.heads} heads, d_kv ${shape.dKv}, d_ff ${shape.dFf}, ` +
  `vocab ${shape.vocab === 'tiny' ? t5Vocabulary().length : shape.vocab}), Optimum layout with a merged decoder, fp32, ` +
  `EOS never chosen; ${generatedIn === undefined ? 'reused from' : `written in ${generatedIn.toFixed(1)} s to`} ` +
  `${folder} (${onnxFiles})`
console.log(modelLine)

const prompts = makePrompts(PROMPTS)
const probeIndex = medianLengthIndex(prompts)
const tokenizer = new Tokenizer(JSON.parse(readFileSync(join(folder, 'tokenizer.json'), 'utf8')), {})
const promptTokens = prompts.map((p) => tokenizer.encode(p, { add_special_tokens: true }).ids.length)
const promptLine =
  `prompts: ${PROMPTS} (${new Set(prompts).size} distinct), ${WORDS_MIN} to ${WORDS_MAX} words of the model's ` +
  `vocabulary: ${Math.min(...promptTokens)} to ${Math.max(...promptTokens)} tokens, mean ` +
  `${mean(promptTokens).toFixed(0)}; ${MAX_NEW_TOKENS} new tokens each, greedy`
console.log(promptLine)

const init = { folder, prompts, maxNewTokens: MAX_NEW_TOKENS }
const rows = []
const descriptions = []
let probe
try {
  for (const contender of contenders) {
    let host
    try {
      host = await startContender(
        contender.module,
        { ...init, options: contender.options },
        // Plain Node: the children import no TypeScript.
        { child: CHILD, execArgv: [] },
      )
      descriptions.push(
        `- ${contender.label}${contender.id === 'inferpool-serial' ? ' (one at a time)' : ''}: ${host.info.describe}`,
      )
      for (const run of contender.runs) {
        if (run.mode === 'probe') {
          probe = await host.run({ mode: 'probe', probeIndex, tokens: PROBE_TOKENS, rounds: PROBE_ROUNDS })
          console.log(`  ${contender.label} · probe: ${probe.rounds.map((r) => r.ttftMs.toFixed(0)).join(', ')} ms`)
          continue
        }
        const result = await host.run(run)
        rows.push({ contender, run, result })
        console.log(`  ${contender.label} · ${run.how}: ${result.tokensPerSecond.toFixed(1)} tokens/s`)
      }
      await host.close()
    } catch (error) {
      console.error(error)
      process.exitCode = 1
      rows.push({ contender, run: contender.runs[0], error })
      await host?.close().catch(() => undefined)
    }
  }
  report()
} finally {
  if (!values.keep) rmSync(dirname(folder), { recursive: true, force: true })
}

/** Writes the model (or, with --keep, reuses the one a previous run left). */
function prepareModel() {
  let dir
  if (values.keep) {
    dir = join(tmpdir(), `inferpool-bench-generate-${quick ? 'tiny' : 't5-small'}`)
    // Written last: a folder without it was left half-written (or by other options).
    const marker = join(dir, 'written')
    if (existsSync(marker) && readFileSync(marker, 'utf8') === JSON.stringify(modelOptions)) {
      return { folder: dir, generatedIn: undefined }
    }
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(dir, { recursive: true })
  } else {
    dir = join(mkdtempSync(join(tmpdir(), 'inferpool-bench-generate-')), 't5')
  }
  const start = performance.now()
  writeTinyT5(dir, modelOptions)
  const seconds = (performance.now() - start) / 1000
  writeFileSync(join(dir, 'written'), JSON.stringify(modelOptions))
  return { folder: dir, generatedIn: seconds }
}

/**
 * `count` prompts of words from the model's vocabulary (so they tokenize into real pieces, a
 * token a word), lengths spread evenly from WORDS_MIN to WORDS_MAX in a shuffled order, a full
 * stop every dozen words or so. Deterministic.
 */
function makePrompts(count) {
  const words = t5Vocabulary()
    .map(([piece]) => piece)
    .filter((piece) => piece.startsWith('▁') && piece.length > 1)
    .map((piece) => piece.slice(1))
  const next = seeded()
  const lengths = Array.from({ length: count }, (_, i) =>
    Math.round(WORDS_MIN + ((WORDS_MAX - WORDS_MIN) * i) / Math.max(1, count - 1)),
  )
  for (let i = lengths.length - 1; i > 0; i--) {
    const j = next(i + 1)
    ;[lengths[i], lengths[j]] = [lengths[j], lengths[i]]
  }
  return lengths.map((length) => {
    const chosen = Array.from({ length }, (_, w) => words[next(words.length)] + (w % 12 === 11 ? '.' : ''))
    return chosen.join(' ').replace(/\.?$/, '.')
  })
}

/** The prompt of median length: the probe. */
function medianLengthIndex(list) {
  const order = list.map((p, i) => [p.length, i]).sort((a, b) => a[0] - b[0])
  return order[Math.floor(order.length / 2)][1]
}

function report() {
  const fixed = (value, digits) => (Number.isFinite(value) ? value.toFixed(digits) : '–')
  const base = rows.find((row) => row.contender.id === 'ort-main' && row.result)?.result
  const header = [
    'contender',
    'how',
    'tokens',
    'wall s',
    'tokens/s',
    '÷ ort-main',
    'TTFT p50 ms',
    'TTFT p99 ms',
    'TTFT from',
    'loop p99 ms',
    'CPU ms/token',
  ]
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i < 2 ? '---' : '---:')).join('|')}|`]
  for (const { contender, run, result, error } of rows) {
    const cells = error
      ? ['failed', '', '', '', '', '', '', '', '']
      : [
          String(result.tokens),
          fixed(result.seconds, 2),
          fixed(result.tokensPerSecond, 1),
          base ? `${fixed(result.tokensPerSecond / base.tokensPerSecond, 2)}×` : '–',
          fixed(result.ttftP50, 0),
          fixed(result.ttftP99, 0),
          run.whole ? '–' : run.mode === 'concurrent' ? 'common start' : "prompt's own start",
          fixed(result.loopP99, 2),
          fixed(result.cpuMsPerToken, 2),
        ]
    lines.push(`| ${[contender.label, run.how, ...cells].join(' | ')} |`)
  }

  console.log(`\n## Generation (${quick ? '--quick run: tiny model, 8 prompts, 8 tokens' : 'full run'})\n`)
  console.log(modelLine)
  console.log(promptLine)
  console.log('')
  console.log(lines.join('\n'))
  console.log(
    '\nTTFT: time to first token. All at once, it counts from the common start (every prompt was ' +
      "submitted then); one at a time, from the prompt's own start (from the common start it would " +
      'also hold every earlier prompt’s whole generation).',
  )
  const pooled = rows.filter((row) => row.result?.rowsPerStep !== undefined && row.run.mode === 'concurrent')
  if (pooled.length > 0) {
    console.log(
      'inferpool, mean prompts per decoder step: ' +
        pooled.map((row) => `${row.contender.label} · ${row.run.how}: ${fixed(row.result.rowsPerStep, 1)}`).join('; '),
    )
  }

  if (probe) reportProbe(fixed)
  reportTargets(fixed, base)
  reportCheck()

  console.log('\ncontenders:')
  for (const line of descriptions) console.log(line)
  console.log(
    `command: npm run bench:generate${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
  )
  console.log(machine())
  console.log(`whole run: ${((performance.now() - started) / 1000).toFixed(0)} s`)
}

/** The probe rounds: each TTFT as decoder steps plus the prompt's encode. */
function reportProbe(fixed) {
  console.log(
    `\ntime to first token of a prompt (${probe.promptTokens} tokens, the median length) submitted while ` +
      `${probe.background} others decode (${probe.tokens} new tokens each), ${probe.rounds.length} rounds; ` +
      `encode ${fixed(probe.encodeMs, 1)} ms:\n`,
  )
  const header = [
    'round',
    'arrives, steps late',
    'rows decoding',
    'cohorts',
    'mean step ms',
    "others' ms/token",
    'TTFT ms',
    'TTFT = steps + encode',
  ]
  console.log(`| ${header.join(' | ')} |`)
  console.log(`|${header.map(() => '---:').join('|')}|`)
  for (const [i, round] of probe.rounds.entries()) {
    console.log(
      `| ${[
        i + 1,
        fixed(round.phase, 2),
        round.rowsDecoding,
        round.cohorts,
        fixed(round.stepMs, 1),
        fixed(round.tokenMs, 1),
        fixed(round.ttftMs, 0),
        `${fixed(stepsOf(round), 2)} steps + ${fixed(probe.encodeMs, 1)} ms`,
      ].join(' | ')} |`,
    )
  }
  const worst = worstRound()
  console.log(
    worst
      ? `\nworst: TTFT = ${fixed(worst.ttftMs, 0)} ms = ${fixed(stepsOf(worst), 2)} decode steps ` +
          `(mean step ${fixed(worst.stepMs, 1)} ms) + encode ${fixed(probe.encodeMs, 1)} ms`
      : '\nno round measured a decoder step: the others decoded faster than their tokens reached the main thread',
  )
  console.log(
    `- encode: median of 5 encoder runs of that prompt alone, on an onnxruntime-node session of the ` +
      `pool's ONNX Runtime with its ${probe.intraOpThreads} intra-op thread(s), the pool idle. On the idle ` +
      `pool the prompt's first token takes ${fixed(probe.aloneTtftMs, 1)} ms from the call (its workers timed ` +
      `encode + first step at ${fixed(probe.poolEncodeAndStepMs, 1)} ms).`,
  )
  console.log(
    '- mean step: decoder-step time over every worker (the inference histograms of pool.metrics()) ' +
      `while the others went from ${Math.round(probe.tokens / 8)} to ${Math.round(probe.tokens / 4)} tokens ` +
      '(later rounds: later windows); "others\' ms/token": the time between two tokens of each of ' +
      'them in that window (above the step when a worker holds several cohorts, which take turns); ' +
      '"arrives, steps late": the submission came that many mean steps after one of the others\' ' +
      'tokens reached the main thread (mid-step arrivals).',
  )
  if (quick) {
    console.log(
      '- --quick: the tiny model decodes faster than the main thread takes its tokens, so these ' +
        'rounds only check the script.',
    )
  }
  const late = probe.rounds.filter((r) => r.othersStillDecoding < probe.background || r.encodesInWindow > 0)
  if (late.length > 0) {
    console.log(
      `- caution: in ${late.length} round(s) some others had finished before the first token, or an ` +
        'encode ran in the step window.',
    )
  }
}

function stepsOf(round) {
  return (round.ttftMs - probe.encodeMs) / round.stepMs
}

/** The round with the most steps in its TTFT, among those measured (undefined when none was). */
function worstRound() {
  const measured = probe.rounds.filter((round) => Number.isFinite(stepsOf(round)))
  return measured.length === 0 ? undefined : measured.reduce((a, b) => (stepsOf(b) > stepsOf(a) ? b : a))
}

function reportTargets(fixed, base) {
  const lines = []
  const verdict = (ok) => (ok ? 'met' : 'NOT met')
  const all = rows.filter((row) => row.contender.id === 'inferpool' && row.run.mode === 'concurrent' && row.result)
  if (all.length > 0 && base) {
    const ratios = all.map((row) => row.result.tokensPerSecond / base.tokensPerSecond)
    const parts = all.map((row, i) => `${fixed(ratios[i], 2)}× (${row.run.how.replace(/^.*?, /, '')})`)
    lines.push(
      `- ${PROMPTS} prompts at once: ${parts.join(', ')} the tokens/s of the one-at-a-time onnxruntime-node ` +
        `loop (target ≥ ${TARGET_RATIO}×): ${verdict(Math.min(...ratios) >= TARGET_RATIO)}`,
    )
  }
  if (probe) {
    const worst = worstRound()
    lines.push(
      `- TTFT of a prompt arriving while ${probe.background} decode: ` +
        (worst
          ? `worst ${fixed(worst.ttftMs, 0)} ms = ${fixed(stepsOf(worst), 2)} steps + encode ` +
            `(target ≤ ${TARGET_STEPS} steps + encode): ${verdict(stepsOf(worst) <= TARGET_STEPS)}`
          : 'not measured (see above)'),
    )
  }
  const pool = rows.filter((row) => row.contender.module === 'inferpool' && row.result)
  if (pool.length > 0) {
    const loop = Math.max(...pool.map((row) => row.result.loopP99))
    lines.push(
      `- event-loop p99 of inferpool, every run: at most ${fixed(loop, 2)} ms (target < ${TARGET_LOOP_MS} ms): ` +
        verdict(loop < TARGET_LOOP_MS),
    )
  }
  if (lines.length > 0) console.log(`\ntargets:\n${lines.join('\n')}`)
}

/** Greedy everywhere on the same model: every run should give every prompt the same token ids. */
function reportCheck() {
  const done = rows.filter((row) => row.result)
  if (done.length < 2) return
  const [reference, ...others] = done
  const name = (row) => `${row.contender.label} · ${row.run.how}`
  console.log(`\noutput check, token ids and text of every prompt against ${name(reference)}:`)
  const short = reference.result.outputs.filter((o) => o.tokens.length !== MAX_NEW_TOKENS).length
  if (short > 0) console.log(`- ${short} of its outputs are not ${MAX_NEW_TOKENS} tokens long`)
  for (const row of others) {
    const outputs = row.result.outputs
    const same = (a, b) => a.length === b.length && a.every((id, i) => id === b[i])
    const ids = outputs.filter((o, i) => same(o.tokens, reference.result.outputs[i].tokens)).length
    const texts = outputs.filter((o, i) => o.text === reference.result.outputs[i].text).length
    let line = `- ${name(row)}: token ids identical for ${ids}/${outputs.length} prompts, text for ${texts}/${outputs.length}`
    const first = outputs.findIndex((o, i) => !same(o.tokens, reference.result.outputs[i].tokens))
    if (first >= 0) {
      const want = reference.result.outputs[first].tokens
      const got = outputs[first].tokens
      const at = got.findIndex((id, i) => id !== want[i])
      line += `; first difference: prompt ${first}, token ${at < 0 ? Math.min(got.length, want.length) : at}`
    }
    console.log(line)
  }
}

function select(only) {
  if (!only) return CONTENDERS
  const ids = only.split(',').map((id) => id.trim())
  const unknown = ids.filter((id) => !CONTENDERS.some((contender) => contender.id === id))
  if (unknown.length > 0) {
    throw new Error(`unknown contender ${unknown.join(', ')}; choose from ${CONTENDERS.map(({ id }) => id).join(', ')}`)
  }
  return CONTENDERS.filter((contender) => ids.includes(contender.id))
}
