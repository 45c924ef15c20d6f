// Small helpers on embeddings, free of any ONNX Runtime import (transformers.js brings its own).

/** Splits a flat result into one view per text, the shape every contender returns. */
export function rows(flat, count) {
  const dim = flat.length / count
  return Array.from({ length: count }, (_, i) => flat.subarray(i * dim, (i + 1) * dim))
}

export function cosine(a, b) {
  let dot = 0
  let na = 0
  let nb = 0
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i]
    na += a[i] * a[i]
    nb += b[i] * b[i]
  }
  return dot / Math.sqrt(na * nb)
}
