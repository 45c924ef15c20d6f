//! A simulated model for tests and the simulation: no runtime, predictable cost and output.
//!
//! [`SimTokenizer`] maps each byte of a text to one token id (no special tokens), so an item's
//! length is its byte length (at least one token). [`SimBackend`] sleeps for
//! `per_batch + per_token × padded tokens`, scaled by `slowdown`, and writes a row that
//! identifies the item: `[length, sum of ids, first id, 0, …]`. Tests compare rows against what
//! they submitted. Failures can be injected: a text containing `panic` panics the batch, one
//! containing `fail` fails it.

use std::{
  sync::{Arc, Mutex, PoisonError},
  time::{Duration, Instant},
};

use crate::{Backend, BackendError, BackendErrorKind, Placement, Tokenize, TokenizedText};

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
  /// What [`Backend::placement`] reports.
  pub placement: Placement,
  /// Where every successful run is recorded, when set (shared by the clones of the backend).
  pub log: Option<Arc<Mutex<Vec<SimRun>>>>,
}

/// One run of a [`SimBackend`], as its `log` records it.
#[derive(Clone, Copy, Debug)]
pub struct SimRun {
  /// When the run began.
  pub started: Instant,
  /// When it returned.
  pub ended: Instant,
  /// Whether [`Backend::run_alone`] reported it spread.
  pub spread: bool,
}

/// Records in `log`, when there is one, a run that began at `started` and ends now.
fn record(log: Option<&Arc<Mutex<Vec<SimRun>>>>, started: Instant, spread: bool) {
  if let Some(log) = log {
    let run = SimRun { started, ended: Instant::now(), spread };
    log.lock().unwrap_or_else(PoisonError::into_inner).push(run);
  }
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
      placement: Placement::default(),
      log: None,
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

  /// Runs `batch` and records the run in `log`, if set.
  fn logged(
    &mut self,
    batch: &[&TokenizedText],
    out: &mut [f32],
    spread: bool,
  ) -> Result<(), BackendError> {
    let started = Instant::now();
    self.run_batch(batch, out)?;
    record(self.log.as_ref(), started, spread);
    Ok(())
  }

  /// One batch: its failures, its cost (slept) and its rows.
  fn run_batch(&mut self, batch: &[&TokenizedText], out: &mut [f32]) -> Result<(), BackendError> {
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
    self.logged(batch, out, false)
  }

  fn run_alone(&mut self, batch: &[&TokenizedText], out: &mut [f32]) -> Result<bool, BackendError> {
    self.logged(batch, out, self.spreads).map(|()| self.spreads)
  }

  fn can_spread(&self) -> bool {
    self.spreads
  }

  fn placement(&self) -> Placement {
    self.placement.clone()
  }
}

/// A simulated encoder-decoder: row `i` generates [`expected_tokens`] of its prompt, one per
/// step, then EOS. Each step checks that every row was fed the token it generated last, so a
/// cohort whose rows got out of line (a wrong `retain`) fails loudly. A prompt containing
/// `fail` fails the step that would generate its third token.
#[derive(Clone, Debug, Default)]
pub struct SimSeq2Seq {
  /// Cost of one decoder step.
  pub per_step: Duration,
  /// Cost of encoding one prompt.
  pub per_prompt: Duration,
  /// What [`Backend::shares_cores`] reports.
  pub shares_cores: bool,
  /// Where every encoder batch and decoder step is recorded, when set.
  pub log: Option<Arc<Mutex<Vec<SimRun>>>>,
}

/// Vocabulary of [`SimSeq2Seq`]; token 0 starts decoding, token 1 is EOS.
pub const SIM_VOCABULARY: usize = 64;

/// The tokens [`SimSeq2Seq`] generates for `prompt` before its EOS: between 3 and 15 (10,000
/// when the prompt contains `long`), each derived from the prompt's bytes and its position.
#[must_use]
pub fn expected_tokens(prompt: &str) -> Vec<u32> {
  let sum: u32 = prompt.bytes().map(u32::from).sum();
  let count = if prompt.contains("long") { 10_000 } else { 3 + sum % 13 };
  (0..count).map(|j| 2 + (sum + 7 * j) % 60).collect()
}

struct SimRows {
  rows: Vec<(Vec<u32>, usize, bool)>,
}

impl crate::DecodeState for SimRows {
  fn retain(&mut self, keep: &[usize]) -> Result<(), BackendError> {
    self.rows = keep.iter().map(|&i| self.rows[i].clone()).collect();
    Ok(())
  }

  fn cache_bytes(&self) -> u64 {
    self.rows.iter().map(|(_, steps, _)| *steps as u64 * 8).sum()
  }
}

impl Backend for SimSeq2Seq {
  fn dimension(&self) -> usize {
    0
  }

  fn run(&mut self, _: &[&TokenizedText], _: &mut [f32]) -> Result<(), BackendError> {
    Err(BackendError::new(BackendErrorKind::Model, "a seq2seq model does not embed"))
  }

  fn seq2seq(&mut self) -> Option<&mut dyn crate::Seq2Seq> {
    Some(self)
  }

  fn shares_cores(&self) -> bool {
    self.shares_cores
  }
}

impl SimSeq2Seq {
  /// Sleeps `cost` and records it in `log`, if set.
  fn spend(&self, cost: Duration) {
    let started = Instant::now();
    if !cost.is_zero() {
      std::thread::sleep(cost);
    }
    record(self.log.as_ref(), started, false);
  }
}

impl crate::Seq2Seq for SimSeq2Seq {
  fn decoder_start(&self) -> u32 {
    0
  }

  fn eos(&self) -> u32 {
    1
  }

  fn cache_bytes_per_token(&self) -> u64 {
    8
  }

  fn encode(
    &mut self,
    batch: &[&TokenizedText],
  ) -> Result<Box<dyn crate::DecodeState>, BackendError> {
    self.spend(self.per_prompt * u32::try_from(batch.len()).unwrap_or(u32::MAX));
    let rows = batch
      .iter()
      .map(|item| {
        let prompt: String =
          item.ids.iter().map(|&b| char::from(u8::try_from(b).unwrap_or(b'?'))).collect();
        let fails = prompt.contains("fail");
        (expected_tokens(&prompt), 0, fails)
      })
      .collect();
    Ok(Box::new(SimRows { rows }))
  }

  fn step(
    &mut self,
    state: &mut dyn crate::DecodeState,
    tokens: &[u32],
    logits: &mut Vec<f32>,
  ) -> Result<usize, BackendError> {
    let state: &mut dyn std::any::Any = state;
    let state = state
      .downcast_mut::<SimRows>()
      .ok_or_else(|| BackendError::new(BackendErrorKind::Run, "not a state of this backend"))?;
    self.spend(self.per_step);
    logits.clear();
    logits.resize(tokens.len() * SIM_VOCABULARY, 0.0);
    for (((expected, steps, fails), &fed), row) in
      state.rows.iter_mut().zip(tokens).zip(logits.chunks_exact_mut(SIM_VOCABULARY))
    {
      let previous = if *steps == 0 { 0 } else { expected[*steps - 1] };
      if fed != previous {
        return Err(BackendError::new(
          BackendErrorKind::Run,
          format!("a row was fed {fed} at step {steps}, expected {previous}"),
        ));
      }
      if *fails && *steps == 2 {
        return Err(BackendError::new(BackendErrorKind::Run, "simulated step failure"));
      }
      let next = expected.get(*steps).copied().unwrap_or(1);
      row[next as usize] = 10.0;
      *steps += 1;
    }
    Ok(SIM_VOCABULARY)
  }
}
