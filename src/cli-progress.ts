// The progress bar of the CLI's `embed` and `generate`: on standard error, only on a terminal.

import { MultiBar } from 'cli-progress'

/** A bar counting `total` things, with its rate; `update` and `stop` do nothing when not shown. */
export interface Progress {
  update(done: number): void
  stop(): void
}

/**
 * A bar `verb [====] done/total unit | rate items/s | ETA`, drawn when `show` and standard error
 * is a terminal. A multi-bar container with one bar: it draws on the current line and ends it
 * with a newline when stopped, where a single bar restores the cursor it saved at the start,
 * which puts the next line over whatever was written meanwhile.
 */
export function progressBar(show: boolean, verb: string, unit: string, total: number): Progress {
  const bars =
    show && process.stderr.isTTY
      ? new MultiBar({
          stream: process.stderr,
          format: `${verb} [{bar}] {value}/{total} ${unit} | {speed} items/s | ETA {eta_formatted}`,
          etaBuffer: 200,
        })
      : undefined
  const started = performance.now()
  const bar = bars?.create(total, 0, { speed: '0' })
  return {
    update(done) {
      const seconds = (performance.now() - started) / 1000
      bar?.update(done, { speed: (done / Math.max(seconds, 1e-3)).toFixed(1) })
    },
    stop() {
      bars?.stop()
    },
  }
}
