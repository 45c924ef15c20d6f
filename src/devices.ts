// Device planning: which device each worker runs on, which workers a model may use, and each
// worker's share of its device's memory. The planning functions are pure (the environment, the
// number of GPUs and their memory are arguments); `cudaDeviceCount` and `queryGpuMemory` read
// the machine, and `Pool.create` calls them only when the plan needs them.

import { execFile } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { promisify } from 'node:util'

import { shown } from './check.js'
import { PoolError } from './errors.js'

/** Most workers in one pool (the native pool's limit). */
export const MAX_WORKERS = 64

/** A device name: `cpu`, `cuda` (for `cuda:0`, or every GPU in a model spec) or `cuda:N`. */
const DEVICE = /^(cpu|cuda(:\d+)?)$/

/** What a GPU worker does when its session cannot be built (see `PoolOptions.onDeviceFailure`). */
export type OnDeviceFailure = 'fail' | 'cpu' | 'unavailable'

/** The environment variables device planning reads. */
export interface DeviceEnv {
  /** `auto` or a comma-separated device list; overrides the `devices` option. */
  INFERPOOL_DEVICES?: string
  /** The GPUs CUDA shows this process. */
  CUDA_VISIBLE_DEVICES?: string
}

/** The device of every worker, and whether a GPU worker falls back to the CPU. */
export interface DevicePlan {
  /** One entry per worker: `'cpu'` or `'cuda:N'`. */
  devices: string[]
  /** Whether a GPU worker whose session cannot be built runs on the CPU instead. */
  cpuFallback: boolean
}

/**
 * The device of every worker: `option` (or `INFERPOOL_DEVICES`, which overrides it) expanded to
 * `cpuWorkers` workers for `'cpu'` and `sessionsPerDevice` for each GPU. `'auto'` asks
 * `gpuCount` (only then) and always falls back to the CPU.
 *
 * @throws {PoolError} `INVALID_INPUT` for a malformed list, an unknown device, or more than
 * {@link MAX_WORKERS} workers; the message names `INFERPOOL_DEVICES` when the list came from it.
 */
export function planDevices(
  option: unknown,
  workers: { cpuWorkers: number; sessionsPerDevice: number; onDeviceFailure: OnDeviceFailure },
  env: DeviceEnv,
  gpuCount: () => number,
): DevicePlan {
  const { cpuWorkers, sessionsPerDevice, onDeviceFailure } = workers
  const fromEnv = env.INFERPOOL_DEVICES?.trim()
  let list = fromEnv ? (fromEnv === 'auto' ? 'auto' : fromEnv.split(',').map((d) => d.trim())) : (option ?? ['cpu'])
  let cpuFallback = onDeviceFailure === 'cpu'
  if (list === 'auto') {
    const gpus = gpuCount()
    list = gpus === 0 ? ['cpu'] : Array.from({ length: gpus }, (_, i) => `cuda:${i}`)
    cpuFallback = true
  }
  if (!Array.isArray(list) || list.length === 0) {
    throw new PoolError(
      'INVALID_INPUT',
      'devices must be "auto" or a non-empty array such as ["cpu"] or ["cuda:0", "cpu"]' +
        (fromEnv ? ` (INFERPOOL_DEVICES is ${JSON.stringify(fromEnv)})` : ''),
    )
  }
  // Count the workers before making a list of them: the count may be anything.
  let count = 0
  for (const device of list) {
    if (typeof device !== 'string' || !DEVICE.test(device)) {
      throw new PoolError(
        'INVALID_INPUT',
        `unknown device ${shown(device)}: expected "cpu" or "cuda:N"` + (fromEnv ? ` (from INFERPOOL_DEVICES)` : ''),
      )
    }
    count += device === 'cpu' ? cpuWorkers : sessionsPerDevice
    if (count > MAX_WORKERS) {
      throw new PoolError(
        'INVALID_INPUT',
        `a pool has 1 to ${MAX_WORKERS} workers; ${list.length} devices with cpuWorkers ${cpuWorkers} and ` +
          `sessionsPerDevice ${sessionsPerDevice} make ${list.reduce((n: number, d: unknown) => n + (d === 'cpu' ? cpuWorkers : sessionsPerDevice), 0)}` +
          (fromEnv ? ` (INFERPOOL_DEVICES is ${JSON.stringify(fromEnv)})` : ''),
      )
    }
  }
  const devices = (list as string[]).flatMap((device) =>
    Array<string>(device === 'cpu' ? cpuWorkers : sessionsPerDevice).fill(device === 'cuda' ? 'cuda:0' : device),
  )
  return { devices, cpuFallback }
}

/**
 * How many GPUs `CUDA_VISIBLE_DEVICES` shows: `undefined` when it is unset (all of them), 0 when
 * it is empty or starts with `-`.
 */
export function visibleGpus(value: string | undefined): number | undefined {
  const visible = value?.trim()
  if (visible === undefined) return undefined
  return visible === '' || visible.startsWith('-') ? 0 : visible.split(',').length
}

/**
 * NVIDIA GPUs this process may use, as CUDA numbers them: from `CUDA_VISIBLE_DEVICES`, else the
 * entries of `/proc/driver/nvidia/gpus` (0 when it cannot be read).
 */
export function cudaDeviceCount(env: DeviceEnv): number {
  const visible = visibleGpus(env.CUDA_VISIBLE_DEVICES)
  if (visible !== undefined) return visible
  try {
    return readdirSync('/proc/driver/nvidia/gpus').length
  } catch {
    return 0
  }
}

/**
 * The workers (indices) whose device is one of `allowed` (`'cuda'` matches every GPU).
 *
 * @throws {PoolError} `INVALID_INPUT` for an unknown device, or when no worker matches.
 */
export function affinity(name: string, allowed: readonly unknown[], devices: readonly string[]): number[] {
  for (const device of allowed) {
    if (typeof device !== 'string' || !DEVICE.test(device)) {
      throw new PoolError(
        'INVALID_INPUT',
        `models[${JSON.stringify(name)}].devices: unknown device ${JSON.stringify(device)}`,
      )
    }
  }
  const workers = devices.flatMap((device, worker) =>
    allowed.some((a) => a === device || (a === 'cuda' && device.startsWith('cuda'))) ? [worker] : [],
  )
  if (workers.length === 0) {
    throw new PoolError(
      'INVALID_INPUT',
      `model ${JSON.stringify(name)} may only use ${allowed.join(', ')}, but the pool runs on ${[...new Set(devices)].join(', ')}`,
    )
  }
  return workers
}

/** How much of each device's memory the loaded models may fill. */
export interface MemorySettings {
  /** Fraction of a device's memory, in (0, 1]. */
  threshold: number
  /** The CPU's budget in bytes; default `threshold` × RAM. */
  cpuBytes?: number
  /** Each GPU's budget in bytes; default `threshold` × its memory. */
  gpuBytes?: number
}

/** Whether {@link workerBudgets} needs the GPUs' memory: a GPU worker without `gpuBytes`. */
export function needsGpuMemory(devices: readonly string[], memory: MemorySettings): boolean {
  return memory.gpuBytes === undefined && devices.some((d) => d !== 'cpu')
}

/**
 * Each worker's share of its device's memory budget, bytes (`Infinity` = unlimited): the
 * budget of a device is shared evenly by its workers. `totalMemory` is the RAM; `gpuMemory` the
 * memory of each GPU by CUDA index (a GPU missing from it is unlimited).
 */
export function workerBudgets(
  devices: readonly string[],
  memory: MemorySettings,
  totalMemory: number,
  gpuMemory: readonly number[],
): number[] {
  const { threshold, cpuBytes, gpuBytes } = memory
  const sharing = new Map<string, number>()
  for (const device of devices) sharing.set(device, (sharing.get(device) ?? 0) + 1)
  return devices.map((device) => {
    let budget: number
    if (device === 'cpu') budget = cpuBytes ?? threshold * totalMemory
    else {
      const total = gpuMemory[Number(device.slice('cuda:'.length))]
      budget = gpuBytes ?? (Number.isFinite(total) && total > 0 ? threshold * total : Infinity)
    }
    return budget / (sharing.get(device) ?? 1)
  })
}

/** How long `nvidia-smi` may take before the GPUs count as unlimited. */
const NVIDIA_SMI_TIMEOUT_MS = 5000

const execFileAsync = promisify(execFile)

/**
 * Total memory of each GPU, bytes, by CUDA index, as `nvidia-smi` reports it; empty when it
 * cannot be run or does not answer within 5 s. Never rejects.
 */
export async function queryGpuMemory(): Promise<number[]> {
  try {
    const { stdout } = await execFileAsync(
      'nvidia-smi',
      ['--query-gpu=memory.total', '--format=csv,noheader,nounits'],
      { encoding: 'utf8', timeout: NVIDIA_SMI_TIMEOUT_MS },
    )
    return parseGpuMemory(stdout)
  } catch {
    return []
  }
}

/** The output of `nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits` in bytes. */
export function parseGpuMemory(stdout: string): number[] {
  return stdout
    .trim()
    .split('\n')
    .map((line) => Number.parseFloat(line) * 2 ** 20)
}
