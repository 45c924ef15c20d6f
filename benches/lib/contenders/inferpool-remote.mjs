// inferpool through Redis: a RemotePool whose calls run on `inferpool worker` processes started
// by benches/cluster.mjs (INFERPOOL_BENCH_REDIS, INFERPOOL_BENCH_PREFIX, INFERPOOL_BENCH_WORKERS).
import { RemotePool } from '../../../dist/bullmq.js'

export async function create() {
  const connection = process.env.INFERPOOL_BENCH_REDIS
  if (!connection) throw new Error('INFERPOOL_BENCH_REDIS is not set: run this contender from benches/cluster.mjs')
  const remote = await RemotePool.create({ connection, prefix: process.env.INFERPOOL_BENCH_PREFIX })
  return {
    describe: `RemotePool (defaults) → ${process.env.INFERPOOL_BENCH_WORKERS}`,
    embed: (texts) => remote.embed(texts),
    close: () => remote.close(),
  }
}
