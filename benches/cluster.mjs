// Scale-out overhead: the same workloads as `npm run bench` through RemotePool and Redis to 1 and
// 2 `inferpool worker` processes on this machine, against the in-process pool on the same cores,
// in one run. Each contender runs in a process of its own (host.mjs); a local Redis
// (`redis-server`, as in the tests) is started and stopped by the script.
//
// Usage: npm run build && npm run bench:cluster [-- --quick]
//   --quick  every workload ~10× smaller, to check the script
//
// The in-process pool and the single worker use the pool's defaults (on 2 cores: 2 CPU workers
// of 1 thread each). The two workers share the same cores, with 1 CPU worker each, so all three
// run the same number of ONNX Runtime sessions: the comparison measures the queue's overhead,
// not more hardware. A benchmark reports; it exits 0 unless a contender fails.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

import { startRedis } from '../__test__/redis.ts'
import { startContender } from './lib/host.mjs'
import { machine, table } from './lib/report.mjs'
import { prepareRun } from './lib/run.mjs'
import { cosine } from './lib/vectors.mjs'

const CLI = join(import.meta.dirname, '..', 'dist', 'cli.js')

const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false } } })
const started = performance.now()
const { corpusLine, workloads, init } = await prepareRun(values.quick)

const SETUPS = [
  { id: 'local', label: 'Pool, in process', contender: 'inferpool', workers: [] },
  { id: 'remote-1', label: 'RemotePool, 1 worker', contender: 'inferpool-remote', workers: [[]] },
  {
    id: 'remote-2',
    label: 'RemotePool, 2 workers',
    contender: 'inferpool-remote',
    workers: [
      ['--cpu-workers', '1'],
      ['--cpu-workers', '1'],
    ],
  },
]

const redis = await startRedis()
const rows = []
const checks = []
const descriptions = []
try {
  for (const setup of SETUPS) {
    const prefix = `bench-${setup.id}`
    const workers = await Promise.all(
      setup.workers.map((args) => startWorker(redis.url, ['--prefix', prefix, ...args])),
    )
    process.env.INFERPOOL_BENCH_REDIS = redis.url
    process.env.INFERPOOL_BENCH_PREFIX = prefix
    process.env.INFERPOOL_BENCH_WORKERS = setup.workers
      .map((args) => `worker (${args.length === 0 ? 'defaults' : args.join(' ')})`)
      .join(' + ')
    const host = await startContender(setup.contender, init)
    descriptions.push(`- ${setup.label}: ${host.info.describe}`)
    checks.push({ setup, vectors: host.info.check })
    try {
      for (const workload of workloads) {
        const result = await host.run(workload)
        rows.push({ contender: setup, workload, result })
        console.log(`  ${setup.label} · ${workload.label}: ${result.itemsPerSecond.toFixed(1)} items/s`)
      }
    } finally {
      await host.close()
      await Promise.all(workers.map((worker) => worker.stop()))
    }
  }
} finally {
  await redis.stop()
}

rows.sort((a, b) => workloads.indexOf(a.workload) - workloads.indexOf(b.workload))
console.log(`\n## Results (${values.quick ? '--quick run, workloads ~10× smaller' : 'full run'})\n`)
console.log(corpusLine)
console.log('')
console.log(table(rows))
console.log('\nthroughput ÷ in-process pool, per workload:')
for (const workload of workloads) {
  const here = rows.filter((row) => row.workload === workload)
  const local = here.find((row) => row.contender.id === 'local').result.itemsPerSecond
  const parts = here
    .filter((row) => row.contender.id !== 'local')
    .map((row) => `${row.contender.label} ${(row.result.itemsPerSecond / local).toFixed(2)}×`)
  console.log(`- ${workload.label}: ${parts.join(', ')}`)
}
const reference = checks[0].vectors
console.log(`\noutput check, lowest cosine against the in-process pool on ${init.checkTexts.length} texts:`)
for (const { setup, vectors } of checks.slice(1)) {
  const worst = Math.min(...vectors.map((vector, i) => cosine(vector, reference[i])))
  console.log(`- ${setup.label}: ${worst.toFixed(6)}`)
}
console.log('\ncontenders:')
for (const line of descriptions) console.log(line)
console.log(machine())
console.log(`whole run: ${((performance.now() - started) / 1000).toFixed(0)} s`)

/** Starts `inferpool worker` with the default model and resolves once it is ready. */
async function startWorker(url, args) {
  const child = spawn(process.execPath, [CLI, 'worker', '--redis', url, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  await new Promise((resolve, reject) => {
    child.stderr.on('data', (chunk) => {
      stderr += chunk
      if (stderr.includes(' ready: ')) resolve()
    })
    child.once('exit', (code) => reject(new Error(`a worker exited with ${code}:\n${stderr}`)))
  })
  return {
    async stop() {
      child.kill('SIGTERM')
      await once(child, 'exit')
    },
  }
}
