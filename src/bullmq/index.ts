// `inferpool/bullmq`: scale out across machines on BullMQ and Redis. Clients anywhere call a
// `RemotePool`; workers anywhere serve a local `Pool` with `serveQueue`. Only this entry loads
// bullmq (an optional peer dependency, with ioredis): `inferpool` itself never does.
export { RemotePool } from './remote.js'
export type { RemoteEmbedOptions, RemoteQueueStatus, RemoteStatus, RemoteStreamOptions } from './remote-types.js'
export { serveQueue, type QueueServer, type QueueServerStats } from './serve.js'
export type { Connection, RemotePoolOptions, ServeQueueOptions } from './options.js'
export { queueName } from './wire.js'
export { PoolError, type PoolErrorCode } from '../errors.js'
