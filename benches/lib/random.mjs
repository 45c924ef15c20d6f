// A small seeded generator (xorshift32) for the benchmarks' deterministic inputs.

/** `next(n)`: an integer from 0 to n − 1; the same `seed` gives the same sequence. */
export function seeded(seed = 0x2545f491) {
  let state = seed
  return (n) => {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    return (state >>> 0) % n
  }
}
