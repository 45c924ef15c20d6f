//! Adaptive batch budget, one controller per worker.
//!
//! After each batch the worker reports its padded tokens and how long it took. The controller
//! hill-climbs the token budget between `min_tokens` and a ceiling:
//! 1. A batch slower than `target_latency` shrinks the budget (×0.75) at once.
//! 2. Otherwise, when the batch was bounded by the budget (so the budget mattered), its
//!    throughput (tokens/s) is compared with the running average: better keeps moving in the
//!    same direction (×1.25 up or ×0.8 down), worse reverses the direction.
//! 3. An out-of-memory error sets the ceiling to half of the failed batch's tokens for good.
//!
//! It also fits the worker's batch cost as `fixed + per_token × padded tokens` (least squares
//! over recent batches, older ones decaying), which lets the batch policy weigh padding against
//! the fixed cost of one more batch.

use std::time::Duration;

/// Settings of the adaptive budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveConfig {
  /// Whether the budget moves at all; when off it stays at `max_batch_tokens` (the cost fit
  /// goes on either way).
  pub enabled: bool,
  /// The budget never goes below this.
  pub min_tokens: usize,
  /// A batch slower than this shrinks the budget.
  pub target_latency: Duration,
}

impl Default for AdaptiveConfig {
  fn default() -> Self {
    Self { enabled: true, min_tokens: 256, target_latency: Duration::from_secs(2) }
  }
}

/// One worker's controller.
#[derive(Clone, Debug)]
pub(crate) struct Controller {
  config: AdaptiveConfig,
  /// Current budget in padded tokens.
  budget: usize,
  /// Highest budget allowed (the policy's, lowered by out-of-memory errors).
  ceiling: usize,
  /// Exponential moving average of tokens/s over budget-bound batches.
  average_rate: Option<f64>,
  /// Whether the last move was up.
  growing: bool,
  /// Decayed sums for the cost fit: weight, Σx, Σy, Σx², Σxy (x = padded tokens, y = seconds).
  fit: [f64; 5],
}

/// Weight kept by older batches at each new observation of the cost fit.
const FIT_DECAY: f64 = 0.9;

impl Controller {
  pub(crate) fn new(config: AdaptiveConfig, max_tokens: usize) -> Self {
    let ceiling = max_tokens.max(1);
    Self { config, budget: ceiling, ceiling, average_rate: None, growing: false, fit: [0.0; 5] }
  }

  /// Current budget in padded tokens.
  pub(crate) fn budget(&self) -> usize {
    self.budget
  }

  /// Current ceiling in padded tokens.
  #[cfg(test)]
  pub(crate) fn ceiling(&self) -> usize {
    self.ceiling
  }

  #[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "budgets are small"
  )]
  fn scale(&mut self, factor: f64) {
    let next = (self.budget as f64 * factor).round() as usize;
    self.budget = next.clamp(self.config.min_tokens.min(self.ceiling), self.ceiling);
  }

  /// The fitted batch cost, once enough batches of different sizes were seen.
  pub(crate) fn cost_model(&self) -> Option<crate::batch::CostModel> {
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
    (per_token > 0.0).then_some(crate::batch::CostModel { fixed: fixed.max(0.0), per_token })
  }

  /// Reports a successful batch of `tokens` padded tokens that took `elapsed`.
  #[expect(clippy::cast_precision_loss, reason = "token counts are far below 2^52")]
  pub(crate) fn observe(&mut self, tokens: usize, elapsed: Duration, budget_bound: bool) {
    let (x, y) = (tokens as f64, elapsed.as_secs_f64());
    for (sum, add) in self.fit.iter_mut().zip([1.0, x, y, x * x, x * y]) {
      *sum = *sum * FIT_DECAY + add;
    }
    if !self.config.enabled {
      return;
    }
    if elapsed > self.config.target_latency {
      self.growing = false;
      self.scale(0.75);
      return;
    }
    if !budget_bound || elapsed.is_zero() {
      return;
    }
    let rate = tokens as f64 / elapsed.as_secs_f64();
    let Some(average) = self.average_rate else {
      self.average_rate = Some(rate);
      return;
    };
    if rate < average * 0.98 {
      self.growing = !self.growing;
    }
    self.scale(if self.growing { 1.25 } else { 0.8 });
    self.average_rate = Some(average * 0.7 + rate * 0.3);
  }

  /// Reports an out-of-memory error on a batch of `tokens` padded tokens.
  pub(crate) fn out_of_memory(&mut self, tokens: usize) {
    self.ceiling = (tokens / 2).max(1);
    self.budget = self.budget.min(self.ceiling);
    self.growing = false;
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn controller() -> Controller {
    Controller::new(
      AdaptiveConfig { enabled: true, min_tokens: 100, target_latency: Duration::from_millis(100) },
      10_000,
    )
  }

  #[test]
  fn shrinks_on_slow_batches_and_stops_at_the_minimum() {
    let mut c = controller();
    for _ in 0..50 {
      c.observe(10_000, Duration::from_millis(500), true);
    }
    assert_eq!(c.budget(), 100);
  }

  #[test]
  fn out_of_memory_caps_the_budget_for_good() {
    let mut c = controller();
    c.out_of_memory(4_000);
    assert_eq!(c.budget(), 2_000);
    for _ in 0..50 {
      c.observe(c.budget(), Duration::from_millis(10), true);
    }
    assert!(c.budget() <= 2_000);
    assert_eq!(c.ceiling(), 2_000);
  }

  #[test]
  fn climbs_back_while_throughput_improves() {
    let mut c = controller();
    for _ in 0..10 {
      c.observe(10_000, Duration::from_millis(500), true);
    }
    let low = c.budget();
    // Throughput grows with the batch (a fixed overhead per batch), latency stays low.
    for _ in 0..40 {
      let tokens = c.budget();
      #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "test values"
      )]
      let micros = (2_000.0 + tokens as f64 * 2.0) as u64;
      c.observe(tokens, Duration::from_micros(micros), true);
    }
    assert!(c.budget() > low * 4, "budget {} did not climb from {low}", c.budget());
  }

  #[test]
  fn fits_the_batch_cost() {
    let mut c = controller();
    assert!(c.cost_model().is_none());
    for tokens in [500_u32, 1_000, 2_000, 4_000, 1_500, 3_000] {
      // 2 ms fixed + 5 µs per token.
      c.observe(tokens as usize, Duration::from_secs_f64(0.002 + 5e-6 * f64::from(tokens)), false);
    }
    let model = c.cost_model().expect("enough varied batches");
    assert!((model.fixed - 0.002).abs() < 1e-4, "{model:?}");
    assert!((model.per_token - 5e-6).abs() < 1e-7, "{model:?}");
  }

  #[test]
  fn disabled_stays_put() {
    let mut c =
      Controller::new(AdaptiveConfig { enabled: false, ..AdaptiveConfig::default() }, 5_000);
    c.observe(5_000, Duration::from_secs(60), true);
    assert_eq!(c.budget(), 5_000);
  }
}
