//! Histograms in Prometheus' shape (cumulative buckets, sum, count), updated lock-free.
//!
//! Every observation is one relaxed `fetch_add` on its bucket, one on the sum; a snapshot reads
//! them without stopping writers, so a scrape may see an observation in the count but not yet
//! in the sum (Prometheus tolerates that; the next scrape is consistent).

use std::{
  sync::atomic::{AtomicU64, Ordering},
  time::Duration,
};

/// Upper bounds of the latency histograms, seconds.
pub const SECONDS_BUCKETS: &[f64] =
  &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Upper bounds of the batch-size histogram, items.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// One histogram.
#[derive(Debug)]
pub(crate) struct Histogram {
  bounds: &'static [f64],
  /// One count per bound, plus the overflow (`+Inf`) bucket; not cumulative.
  counts: Box<[AtomicU64]>,
  /// Sum of the observations, in `unit`s (integers keep the sum exact and lock-free): its low
  /// 64 bits.
  sum: AtomicU64,
  /// How many times `sum` wrapped (its high 64 bits): nanosecond sums of a busy, long-running
  /// pool pass 2^64 within weeks.
  sum_wraps: AtomicU64,
  /// What one unit of `sum` is worth.
  unit: f64,
}

impl Histogram {
  /// A latency histogram (nanosecond sums).
  pub(crate) fn seconds() -> Self {
    Self::new(SECONDS_BUCKETS, 1e-9)
  }

  /// A count histogram (whole-number sums).
  pub(crate) fn sizes() -> Self {
    Self::new(SIZE_BUCKETS, 1.0)
  }

  fn new(bounds: &'static [f64], unit: f64) -> Self {
    Self {
      bounds,
      counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
      sum: AtomicU64::new(0),
      sum_wraps: AtomicU64::new(0),
      unit,
    }
  }

  fn record(&self, value: f64, units: u64) {
    let bucket = self.bounds.partition_point(|&bound| bound < value);
    self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    let before = self.sum.fetch_add(units, Ordering::Relaxed);
    if before.checked_add(units).is_none() {
      self.sum_wraps.fetch_add(1, Ordering::Relaxed);
    }
  }

  pub(crate) fn record_duration(&self, elapsed: Duration) {
    self.record(elapsed.as_secs_f64(), u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
  }

  #[expect(clippy::cast_precision_loss, reason = "batch sizes are small")]
  pub(crate) fn record_count(&self, count: usize) {
    self.record(count as f64, count as u64);
  }

  #[expect(
    clippy::cast_precision_loss,
    reason = "sums of nanoseconds; a float is what is reported"
  )]
  pub(crate) fn snapshot(&self) -> HistogramSnapshot {
    let mut cumulative = 0;
    let buckets = self
      .bounds
      .iter()
      .zip(self.counts.iter())
      .map(|(&bound, count)| {
        cumulative += count.load(Ordering::Relaxed);
        (bound, cumulative)
      })
      .collect();
    let count = cumulative + self.counts[self.bounds.len()].load(Ordering::Relaxed);
    let sum = self.sum_wraps.load(Ordering::Relaxed) as f64 * 2f64.powi(64)
      + self.sum.load(Ordering::Relaxed) as f64;
    HistogramSnapshot { buckets, count, sum: sum * self.unit }
  }
}

/// A histogram read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
  /// `(upper bound, observations ≤ it)`, cumulative, in increasing order (`+Inf` is `count`).
  pub buckets: Vec<(f64, u64)>,
  /// Observations.
  pub count: u64,
  /// Sum of the observations (seconds, or items).
  pub sum: f64,
}

/// The pool's histograms.
#[derive(Debug)]
pub(crate) struct PoolHistograms {
  /// Per item: admission to the start of its batch.
  pub(crate) queue_wait: Histogram,
  /// Per request: tokenizing its texts.
  pub(crate) tokenize: Histogram,
  /// Per request: `submit` to its answer.
  pub(crate) end_to_end: Histogram,
}

impl Default for PoolHistograms {
  fn default() -> Self {
    Self {
      queue_wait: Histogram::seconds(),
      tokenize: Histogram::seconds(),
      end_to_end: Histogram::seconds(),
    }
  }
}

/// Per worker: its batches' run time and size.
#[derive(Debug)]
pub(crate) struct WorkerHistograms {
  pub(crate) inference: Histogram,
  pub(crate) batch_size: Histogram,
}

impl Default for WorkerHistograms {
  fn default() -> Self {
    Self { inference: Histogram::seconds(), batch_size: Histogram::sizes() }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn buckets_are_cumulative_and_inclusive() {
    let h = Histogram::sizes();
    for n in [1, 1, 3, 64, 1000] {
      h.record_count(n);
    }
    let s = h.snapshot();
    assert_eq!(s.count, 5);
    assert!((s.sum - 1069.0).abs() < f64::EPSILON);
    let at = |bound: f64| s.buckets.iter().find(|b| (b.0 - bound).abs() < 1e-9).unwrap().1;
    assert_eq!(at(1.0), 2);
    assert_eq!(at(2.0), 2);
    assert_eq!(at(4.0), 3);
    assert_eq!(at(64.0), 4);
    assert_eq!(at(512.0), 4);
  }

  #[test]
  fn a_sum_past_64_bits_carries_on() {
    let h = Histogram::sizes();
    h.record(1.0, u64::MAX - 1);
    h.record(1.0, 3);
    #[expect(clippy::cast_precision_loss, reason = "the expected value is a float")]
    let expected = u64::MAX as f64 + 2.0;
    assert!((h.snapshot().sum - expected).abs() / expected < 1e-12);
  }

  #[test]
  fn durations_sum_in_seconds() {
    let h = Histogram::seconds();
    h.record_duration(Duration::from_millis(3));
    h.record_duration(Duration::from_millis(7));
    let s = h.snapshot();
    assert!((s.sum - 0.010).abs() < 1e-12);
    assert_eq!(s.buckets.iter().find(|b| (b.0 - 0.005).abs() < 1e-12).unwrap().1, 1);
    assert_eq!(s.buckets.iter().find(|b| (b.0 - 0.01).abs() < 1e-12).unwrap().1, 2);
  }
}
