// Who is compared. Each embedding contender lives in contenders/<id>.mjs and runs in a process of
// its own (see host.mjs); `peer` marks the ways Node users embed today without inferpool.
export const CONTENDERS = [
  { id: 'inferpool', label: 'inferpool' },
  { id: 'piscina', label: 'piscina + onnxruntime-node', peer: true },
  { id: 'transformers', label: 'transformers.js', peer: true },
  { id: 'ort-main', label: 'onnxruntime-node, main thread', peer: true },
  { id: 'ceiling', label: 'onnxruntime-node, session.run only' },
  // Only when named in --only: the main-thread session whose threads sleep between calls.
  { id: 'ort-main-idle', label: 'onnxruntime-node, main thread, threads idle between calls', onRequest: true },
  // Only with --baseline: inferpool from another build, to compare two versions in one run.
  { id: 'inferpool-baseline', label: 'inferpool, baseline build', baseline: true },
]
