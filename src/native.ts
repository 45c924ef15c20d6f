import { createRequire } from 'node:module'

import type * as Binding from './binding.cjs'

/** The napi-rs binding; its loader picks the `.node` file for this platform. */
export type NativeBinding = typeof Binding

let binding: NativeBinding | undefined

/** Loads the native addon on first use. */
export function native(): NativeBinding {
  if (!binding) {
    const require = createRequire(import.meta.url)
    binding = require('./binding.cjs') as NativeBinding
  }
  return binding
}
