// inferpool with its defaults: the texts go to Rust threads, which tokenize, batch across calls
// and run the model off the event loop.
import { Pool } from '../../../dist/index.js'

// INFERPOOL_BENCH_OPTIONS (JSON) passes Pool.create options, to compare settings.
export async function create() {
  const options = JSON.parse(process.env.INFERPOOL_BENCH_OPTIONS ?? '{}')
  const pool = await Pool.create(options)
  const workers = pool.status().workers.length
  const settings = Object.keys(options).length === 0 ? 'defaults' : JSON.stringify(options)
  return {
    describe: `inferpool, ${settings}: ${workers} CPU workers, ONNX Runtime ${pool.runtime.version}`,
    embed: (texts) => pool.embed(texts),
    close: () => pool.close(),
  }
}
