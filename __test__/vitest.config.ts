import { fileURLToPath } from 'node:url'

import { defineConfig } from 'vitest/config'

export default defineConfig({
  root: fileURLToPath(new URL('..', import.meta.url)),
  test: {
    include: ['__test__/**/*.spec.ts'],
    pool: 'forks',
    // Each spec file runs in its own process: one ONNX Runtime per process, and the
    // runtime-loading spec needs a process where none is loaded yet.
    isolate: true,
    fileParallelism: false,
    globalSetup: ['__test__/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
  },
})
