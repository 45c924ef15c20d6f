// inferpool with its defaults: the texts go to Rust threads, which tokenize, batch across calls
// and run the model off the event loop.
import { Pool } from '../../../dist/index.js'

export async function create() {
  const pool = await Pool.create()
  const workers = pool.status().workers.length
  return {
    describe: `inferpool, defaults: ${workers} CPU workers, ONNX Runtime ${pool.runtime.version}`,
    embed: (texts) => pool.embed(texts),
    close: () => pool.close(),
  }
}
