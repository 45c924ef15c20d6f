// Checks shared by every option and argument: integer ranges, byte counts, paths, unknown keys
// (with the nearest known key as a hint), and how a wrong value is named in the message. Each
// check throws `INVALID_INPUT` naming the option and what it accepts.

import { PoolError } from './errors.js'

/** Largest count or duration in milliseconds an option takes (the longest timer Node runs). */
export const MAX_INT = 2 ** 31 - 1

/**
 * `value` when it is an integer from `min` to `max`, `fallback` when it is undefined.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the option and its range.
 */
export function integer<F extends number | undefined>(
  name: string,
  value: unknown,
  min: number,
  max: number,
  fallback: F,
): number | F {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new PoolError('INVALID_INPUT', `${name} must be an integer from ${min} to ${max}, got ${shown(value)}`)
  }
  return value
}

/**
 * An integer from 1 to 2^31 - 1 (a count or a duration in milliseconds), `fallback` when
 * undefined.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the option and its range.
 */
export function positiveInt(name: string, value: unknown, fallback: number): number {
  return integer(name, value, 1, MAX_INT, fallback)
}

/**
 * A finite number of bytes, or undefined.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the option and its range.
 */
export function bytes(name: string, value: unknown): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number' || !(value >= 0 && value <= Number.MAX_SAFE_INTEGER)) {
    throw new PoolError(
      'INVALID_INPUT',
      `${name} must be a finite number of bytes from 0 to ${Number.MAX_SAFE_INTEGER}, got ${shown(value)}`,
    )
  }
  return value
}

/**
 * A non-empty string, or undefined.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the option.
 */
export function pathOption(name: string, value: unknown): string | undefined {
  if (value !== undefined && (typeof value !== 'string' || value.length === 0)) {
    throw new PoolError('INVALID_INPUT', `${name} must be a path, got ${shown(value)}`)
  }
  return value
}

/**
 * Checks that `options` is an object whose keys are all in `known`.
 *
 * @throws {PoolError} `INVALID_INPUT` naming the first unknown key and the nearest known one.
 */
export function checkKeys(options: unknown, known: Record<string, true>, where = 'options'): void {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new PoolError('INVALID_INPUT', `${where} must be an object, got ${shown(options)}`)
  }
  for (const key of Object.keys(options)) {
    if (Object.hasOwn(known, key)) continue
    const names = Object.keys(known)
    const near = nearest(key, names)
    throw new PoolError(
      'INVALID_INPUT',
      `unknown option ${JSON.stringify(key)}${where === 'options' ? '' : ` in ${where}`}: ` +
        (near === undefined ? `expected one of ${names.join(', ')}` : `did you mean ${JSON.stringify(near)}?`),
    )
  }
}

/** The name in `names` closest to `key`, when one is close enough to be a misspelling of it. */
export function nearest(key: string, names: string[]): string | undefined {
  let best: string | undefined
  let bestDistance = Math.max(2, Math.floor(key.length / 3)) + 1
  for (const name of names) {
    const d = distance(key.toLowerCase(), name.toLowerCase())
    if (d < bestDistance) [best, bestDistance] = [name, d]
  }
  return best
}

/** Edit distance of `a` and `b`: insertions, deletions, substitutions and swaps of neighbours. */
export function distance(a: string, b: string): number {
  // Three rows of the dynamic-programming table: two back (for swaps), previous, current.
  let before: number[] = []
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      let d = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, before[j - 2] + 1)
      current.push(d)
    }
    ;[before, previous] = [previous, current]
  }
  return previous[b.length]
}

/** The type of `value` in an error message: `'null'`, `'an array'`, or its `typeof`. */
export function describe(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  return typeof value
}

/** `value` in an error message: numbers, booleans and strings as they are, others by their type. */
export function shown(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value)
  return describe(value)
}
