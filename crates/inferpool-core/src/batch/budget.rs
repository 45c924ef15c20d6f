//! A worker's token budget for one model and its measured batch cost.
//!
//! * The budget starts at `max_batch_tokens`, its ceiling. A batch slower than the latency target
//!   (`BatchPolicy::target_latency`) shrinks it (×0.75, not below 256 tokens), so one batch does
//!   not hold the device, and the interactive texts behind it, for long; a batch faster than half
//!   the target lets it grow back (×1.25, up to the ceiling).
//! * A batch that fails with out-of-memory lowers the ceiling below half of its padded tokens,
//!   for good (the batch is retried in smaller pieces).
//! * After each successful batch the worker reports its padded tokens and how long it took; the
//!   cost is fitted as `fixed + per_token × padded tokens` (least squares over recent batches,
//!   older ones decaying). Water-filling reads the per-token speed, the batch policy weighs
//!   padding against the fixed cost of one more batch, and peers predict when a batch ends.

use std::time::Duration;

use crate::batch::CostModel;

/// The budget never shrinks below this many tokens for being slow.
const MIN_TOKENS: usize = 256;

/// One worker's budget and cost fit for one model.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
  /// Most padded tokens in one batch now.
  tokens: usize,
  /// Highest budget: `max_batch_tokens`, lowered by out-of-memory errors.
  ceiling: usize,
  /// A batch slower than this shrinks the budget.
  target: Duration,
  /// Decayed sums for the cost fit: weight, Σx, Σy, Σx², Σxy (x = padded tokens, y = seconds).
  fit: [f64; 5],
}

/// Weight kept by older batches at each new observation of the cost fit.
const FIT_DECAY: f64 = 0.9;

impl Budget {
  pub(crate) fn new(max_tokens: usize, target: Duration) -> Self {
    let ceiling = max_tokens.max(1);
    Self { tokens: ceiling, ceiling, target, fit: [0.0; 5] }
  }

  /// Most padded tokens in one batch now.
  pub(crate) fn tokens(&self) -> usize {
    self.tokens
  }

  #[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "budgets are small"
  )]
  fn scale(&mut self, factor: f64) {
    let next = (self.tokens as f64 * factor).round() as usize;
    self.tokens = next.clamp(MIN_TOKENS.min(self.ceiling), self.ceiling);
  }

  /// The fitted batch cost, once enough batches of different sizes were seen.
  pub(crate) fn cost_model(&self) -> Option<CostModel> {
    let [w, sx, sy, sxx, sxy] = self.fit;
    if w < 1.8 {
      return None;
    }
    let (mx, my) = (sx / w, sy / w);
    let var = sxx / w - mx * mx;
    if var <= (0.05 * mx) * (0.05 * mx) {
      return None;
    }
    let per_token = (sxy / w - mx * my) / var;
    let fixed = my - per_token * mx;
    (per_token > 0.0).then_some(CostModel { fixed: fixed.max(0.0), per_token })
  }

  /// Reports a successful batch of `tokens` padded tokens that took `elapsed`.
  #[expect(clippy::cast_precision_loss, reason = "token counts are far below 2^52")]
  pub(crate) fn observe(&mut self, tokens: usize, elapsed: Duration) {
    let (x, y) = (tokens as f64, elapsed.as_secs_f64());
    for (sum, add) in self.fit.iter_mut().zip([1.0, x, y, x * x, x * y]) {
      *sum = *sum * FIT_DECAY + add;
    }
    if elapsed > self.target {
      self.scale(0.75);
    } else if elapsed < self.target / 2 {
      self.scale(1.25);
    }
  }

  /// Reports an out-of-memory error on a batch of `tokens` padded tokens.
  pub(crate) fn out_of_memory(&mut self, tokens: usize) {
    self.ceiling = self.ceiling.min((tokens / 2).max(1));
    self.tokens = self.tokens.min(self.ceiling);
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn budget() -> Budget {
    Budget::new(10_000, Duration::from_millis(100))
  }

  #[test]
  fn slow_batches_shrink_it_to_the_floor_and_fast_ones_grow_it_back() {
    let mut b = budget();
    for _ in 0..50 {
      b.observe(b.tokens(), Duration::from_millis(500));
    }
    assert_eq!(b.tokens(), MIN_TOKENS);
    // Within the target but over half of it: it stays.
    b.observe(b.tokens(), Duration::from_millis(80));
    assert_eq!(b.tokens(), MIN_TOKENS);
    for _ in 0..50 {
      b.observe(b.tokens(), Duration::from_millis(10));
    }
    assert_eq!(b.tokens(), 10_000);
  }

  #[test]
  fn out_of_memory_lowers_the_budget_for_good() {
    let mut b = budget();
    assert_eq!(b.tokens(), 10_000);
    b.out_of_memory(4_000);
    assert_eq!(b.tokens(), 2_000);
    // Fast batches do not lift it above the new ceiling.
    for _ in 0..50 {
      b.observe(b.tokens(), Duration::from_millis(10));
    }
    assert_eq!(b.tokens(), 2_000);
    // A later failure of a batch larger than the ceiling does not raise it.
    b.out_of_memory(8_000);
    assert_eq!(b.tokens(), 2_000);
  }

  #[test]
  fn fits_the_batch_cost() {
    let mut b = budget();
    assert!(b.cost_model().is_none());
    for tokens in [500_u32, 1_000, 2_000, 4_000, 1_500, 3_000] {
      // 2 ms fixed + 5 µs per token.
      b.observe(tokens as usize, Duration::from_secs_f64(0.002 + 5e-6 * f64::from(tokens)));
    }
    let model = b.cost_model().expect("enough varied batches");
    assert!((model.fixed - 0.002).abs() < 1e-4, "{model:?}");
    assert!((model.per_token - 5e-6).abs() < 1e-7, "{model:?}");
  }

  #[test]
  fn batches_of_one_size_give_no_fit() {
    let mut b = budget();
    for _ in 0..10 {
      b.observe(1_000, Duration::from_millis(7));
    }
    assert!(b.cost_model().is_none());
  }
}
