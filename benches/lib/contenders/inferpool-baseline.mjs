// inferpool from another build (`npm run bench -- --baseline <its dist folder>`), with the same
// defaults: the same workloads in the same run show whether a change made inferpool faster or
// slower.
import { isAbsolute, join } from 'node:path'
import { pathToFileURL } from 'node:url'

export async function create() {
  const dist = process.env.INFERPOOL_BENCH_BASELINE
  if (!dist || !isAbsolute(dist)) throw new Error('the baseline needs the absolute path of a dist folder')
  const { Pool } = await import(pathToFileURL(join(dist, 'index.js')).href)
  const pool = await Pool.create()
  return {
    describe: `inferpool from ${dist}, defaults: ${pool.status().workers.length} CPU workers, ONNX Runtime ${pool.runtime.version}`,
    embed: (texts) => pool.embed(texts),
    close: () => pool.close(),
  }
}
