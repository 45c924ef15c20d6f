//! A simulated model for tests and the simulation: no runtime, predictable cost and output.
//!
//! [`SimTokenizer`] maps each byte of a text to one token id (no special tokens), so an item's
//! length is its byte length (at least one token). [`SimBackend`] sleeps for
//! `per_batch + per_token × padded tokens`, scaled by `slowdown`, and writes a row that
//! identifies the item: `[length, sum of ids, first id, 0, …]`. Tests compare rows against what
//! they submitted. Failures can be injected: a text containing `panic` panics the batch, one
//! containing `fail` fails it.

use std::time::Duration;

use crate::{Backend, BackendError, BackendErrorKind, Tokenize, TokenizedText};

/// One token per byte.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimTokenizer;

impl Tokenize for SimTokenizer {
  fn encode(&self, texts: &[String]) -> Result<Vec<TokenizedText>, BackendError> {
    Ok(
      texts
        .iter()
        .map(|text| {
          let mut ids: Vec<u32> = text.bytes().map(u32::from).collect();
          if ids.is_empty() {
            ids.push(0);
          }
          let type_ids = vec![0; ids.len()];
          TokenizedText { ids, type_ids }
        })
        .collect(),
    )
  }
}

/// A backend whose cost and output are known in advance.
#[derive(Clone, Debug)]
pub struct SimBackend {
  /// Width of a row (at least 3).
  pub dimension: usize,
  /// Fixed cost of one batch.
  pub per_batch: Duration,
  /// Cost of one padded token.
  pub per_token: Duration,
  /// Multiplies every cost (a slow device has `slowdown > 1`).
  pub slowdown: f64,
  /// Probability that a batch fails with a transient [`BackendErrorKind::Run`] error.
  pub flaky: f64,
  /// Batches with more padded tokens than this fail with [`BackendErrorKind::OutOfMemory`].
  pub memory_tokens: Option<usize>,
  /// Seed of the failure draws.
  pub seed: u64,
  /// [`Backend::run_alone`] reports the batch spread over idle workers' cores (it runs in the
  /// same time: only the report differs).
  pub spreads: bool,
}

impl Default for SimBackend {
  fn default() -> Self {
    Self {
      dimension: 4,
      per_batch: Duration::ZERO,
      per_token: Duration::ZERO,
      slowdown: 1.0,
      flaky: 0.0,
      memory_tokens: None,
      seed: 1,
      spreads: false,
    }
  }
}

impl SimBackend {
  /// The time a batch of `padded` tokens takes on this backend.
  #[must_use]
  pub fn cost(&self, padded: usize) -> Duration {
    (self.per_batch + self.per_token * u32::try_from(padded).unwrap_or(u32::MAX))
      .mul_f64(self.slowdown)
  }

  /// Next pseudo-random number in [0, 1).
  #[expect(clippy::cast_precision_loss, reason = "53 random bits")]
  fn draw(&mut self) -> f64 {
    self.seed ^= self.seed << 13;
    self.seed ^= self.seed >> 7;
    self.seed ^= self.seed << 17;
    (self.seed >> 11) as f64 / (1_u64 << 53) as f64
  }
}

/// The row [`SimBackend`] writes for `text` (what a test expects back).
#[must_use]
pub fn expected_row(text: &str, dimension: usize) -> Vec<f32> {
  let tokens =
    SimTokenizer.encode(&[text.to_owned()]).expect("the simulated tokenizer never fails");
  let mut row = vec![0.0; dimension];
  write_row(&tokens[0], &mut row);
  row
}

#[expect(clippy::cast_precision_loss, reason = "test values stay far below 2^24")]
fn write_row(item: &TokenizedText, row: &mut [f32]) {
  row.fill(0.0);
  row[0] = item.len() as f32;
  row[1] = item.ids.iter().map(|&id| u64::from(id)).sum::<u64>() as f32;
  row[2] = item.ids.first().copied().unwrap_or_default() as f32;
}

impl Backend for SimBackend {
  fn dimension(&self) -> usize {
    self.dimension
  }

  fn run(&mut self, batch: &[&TokenizedText], out: &mut [f32]) -> Result<(), BackendError> {
    let contains = |needle: &[u8]| {
      batch.iter().any(|item| {
        item
          .ids
          .windows(needle.len())
          .any(|w| w.iter().copied().eq(needle.iter().map(|&b| u32::from(b))))
      })
    };
    assert!(!contains(b"panic"), "simulated panic");
    if contains(b"fail") {
      return Err(BackendError::new(BackendErrorKind::Run, "simulated failure"));
    }
    let padded = batch.iter().map(|item| item.len().max(1)).max().unwrap_or(0) * batch.len();
    if self.memory_tokens.is_some_and(|limit| padded > limit) {
      return Err(BackendError::new(
        BackendErrorKind::OutOfMemory,
        format!("{padded} tokens do not fit"),
      ));
    }
    if self.flaky > 0.0 && self.draw() < self.flaky {
      return Err(BackendError::new(BackendErrorKind::Run, "simulated transient failure"));
    }
    let cost = self.cost(padded);
    if !cost.is_zero() {
      std::thread::sleep(cost);
    }
    for (item, row) in batch.iter().zip(out.chunks_exact_mut(self.dimension)) {
      write_row(item, row);
    }
    Ok(())
  }

  fn run_alone(&mut self, batch: &[&TokenizedText], out: &mut [f32]) -> Result<bool, BackendError> {
    self.run(batch, out).map(|()| self.spreads)
  }
}
