// The main-thread session of ort-main.mjs with one option changed: its pool threads stop spinning
// when a run returns (ONNX Runtime's `session.force_spinning_stop`), as inferpool's do. By default
// they keep spinning for a while after each run, which keeps a core busy between calls and
// saves the next run its threads' wake-up and cold caches. Run on request only: it shows what
// that spinning buys in latency and costs in CPU.
import { mainThread } from './ort-main.mjs'

export function create(model) {
  return mainThread(
    model,
    { extra: { session: { force_spinning_stop: '1' } } },
    'threads stop spinning when a run returns (session.force_spinning_stop)',
  )
}
