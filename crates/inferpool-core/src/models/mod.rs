//! The models a pool serves, and what it tells about loading and unloading them.
//!
//! A pool knows a fixed list of models ([`ModelConfig`]), each with its own tokenizer, queues
//! and counters. A worker loads a model on demand by calling the [`ModelFactory`] on its own
//! thread, keeps what it loaded while its memory budget allows, and unloads:
//! * to make room for another model (*eviction*: the lowest priority first, then the lowest
//!   usage score, a use count that halves every [`USAGE_HALF_LIFE`], so both recent and frequent
//!   use keep a model loaded);
//! * after `idle_timeout` without use;
//! * when asked ([`crate::Pool::unload`]).
//!
//! A load that has to evict is a *switch*; `max_switches_per_hour` caps them per worker.

pub(crate) mod decisions;
pub(crate) mod placement;
pub(crate) mod residency;

use std::{
  sync::Arc,
  time::{Duration, Instant},
};

use crate::{Backend, BackendError, Tokenize};

/// Half-life of a loaded model's usage score.
pub const USAGE_HALF_LIFE: Duration = Duration::from_secs(60);

/// One model of a pool.
#[derive(Clone)]
pub struct ModelConfig {
  /// Name, for events and status.
  pub name: String,
  /// Its tokenizer, shared by every caller.
  pub tokenizer: Arc<dyn Tokenize>,
  /// Higher runs first when workers are scarce, and is evicted last.
  pub priority: i32,
  /// The workers (by index) that may load it; `None` = every worker.
  pub workers: Option<Vec<usize>>,
  /// Estimated memory of one loaded copy, bytes (counted against the worker's budget).
  pub memory: u64,
  /// What it does: embed texts ([`crate::Pool::submit_to`]) or generate text
  /// ([`crate::Pool::generate`]).
  pub kind: ModelKind,
}

/// What a model does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelKind {
  /// One vector per text.
  #[default]
  Embedding,
  /// An encoder-decoder that generates text from a prompt, in cohorts
  /// (the `generation` module).
  Seq2Seq,
}

impl std::fmt::Debug for ModelConfig {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("ModelConfig")
      .field("name", &self.name)
      .field("priority", &self.priority)
      .field("workers", &self.workers)
      .field("memory", &self.memory)
      .field("kind", &self.kind)
      .finish_non_exhaustive()
  }
}

impl ModelConfig {
  /// A model every worker may load, priority 0, no memory estimate.
  pub fn new(name: impl Into<String>, tokenizer: Arc<dyn Tokenize>) -> Self {
    Self {
      name: name.into(),
      tokenizer,
      priority: 0,
      workers: None,
      memory: 0,
      kind: ModelKind::Embedding,
    }
  }

  pub(crate) fn allows(&self, worker: usize) -> bool {
    self.workers.as_ref().is_none_or(|w| w.contains(&worker))
  }
}

/// Builds model `model`'s backend for worker `worker`, on that worker's thread.
pub type ModelFactory =
  Box<dyn Fn(usize, usize) -> Result<Box<dyn Backend>, BackendError> + Send + Sync>;

/// Why a worker unloaded a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnloadReason {
  /// Unused for longer than the idle timeout.
  Idle,
  /// [`crate::Pool::unload`] asked for it.
  Requested,
  /// Room was needed for another model (the index given).
  Evicted {
    /// The model loaded in its place.
    for_model: usize,
  },
}

/// Something that happened to a model or a worker.
#[derive(Clone, Debug)]
pub enum Event {
  /// A worker loaded a model.
  ModelLoaded {
    /// Model index.
    model: usize,
    /// Worker index.
    worker: usize,
    /// How long the load took.
    took: Duration,
  },
  /// A worker unloaded a model.
  ModelUnloaded {
    /// Model index.
    model: usize,
    /// Worker index.
    worker: usize,
    /// Why.
    reason: UnloadReason,
  },
  /// A worker could not load a model.
  ModelLoadFailed {
    /// Model index.
    model: usize,
    /// Worker index.
    worker: usize,
    /// Why.
    error: BackendError,
  },
  /// A worker's batches failed `max_attempts` times in a row; it keeps retrying with back-off.
  WorkerFailed {
    /// Worker index.
    worker: usize,
    /// The last error.
    error: BackendError,
  },
  /// A failed worker ran a batch successfully again.
  WorkerRecovered {
    /// Worker index.
    worker: usize,
  },
}

/// Where events go: called on the worker thread where they happen, so it must be quick.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// The models of a pool and how to load them.
pub struct Models {
  /// Every model, by index.
  pub models: Vec<ModelConfig>,
  /// Builds a backend.
  pub factory: ModelFactory,
  /// Models loaded on every worker that allows them before the pool starts (a failure there
  /// fails the start).
  pub preload: Vec<usize>,
  /// Receives events, if set.
  pub events: Option<EventSink>,
}

impl std::fmt::Debug for Models {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Models")
      .field("models", &self.models)
      .field("preload", &self.preload)
      .finish_non_exhaustive()
  }
}

/// A decaying count: it halves every `half_life`, so both recent and frequent use weigh. A
/// model's usage score (items, [`USAGE_HALF_LIFE`]) and a generation model's recent tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
  score: f64,
  at: Instant,
  half_life: Duration,
}

impl Usage {
  /// A usage score that halves every [`USAGE_HALF_LIFE`].
  pub(crate) fn new(now: Instant) -> Self {
    Self::decaying(now, USAGE_HALF_LIFE)
  }

  /// A count that halves every `half_life`.
  pub(crate) fn decaying(now: Instant, half_life: Duration) -> Self {
    Self { score: 0.0, at: now, half_life }
  }

  /// The score at `now`.
  pub(crate) fn score(&self, now: Instant) -> f64 {
    let age = now.saturating_duration_since(self.at).as_secs_f64();
    self.score * (-age / self.half_life.as_secs_f64()).exp2()
  }

  /// The rate the score stands for at `now`, per second: what a steady rate `r` settles the
  /// score to is `r × half_life / ln 2`.
  pub(crate) fn rate(&self, now: Instant) -> f64 {
    self.score(now) * std::f64::consts::LN_2 / self.half_life.as_secs_f64()
  }

  /// Counts `items` uses at `now`.
  pub(crate) fn add(&mut self, items: usize, now: Instant) {
    #[expect(clippy::cast_precision_loss, reason = "batch sizes are small")]
    let items = items as f64;
    self.score = self.score(now) + items;
    self.at = now;
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn usage_halves_every_half_life_and_adds_up() {
    let start = Instant::now();
    let mut usage = Usage::new(start);
    usage.add(8, start);
    assert!((usage.score(start) - 8.0).abs() < 1e-9);
    assert!((usage.score(start + USAGE_HALF_LIFE) - 4.0).abs() < 1e-9);
    usage.add(1, start + USAGE_HALF_LIFE);
    assert!((usage.score(start + USAGE_HALF_LIFE * 2) - 2.5).abs() < 1e-9);
  }

  #[test]
  fn a_steady_rate_reads_back_as_that_rate() {
    let start = Instant::now();
    let mut tokens = Usage::decaying(start, Duration::from_secs(2));
    let tick = Duration::from_millis(10);
    for i in 1..=2000 {
      tokens.add(5, start + tick * i);
    }
    let rate = tokens.rate(start + tick * 2000);
    assert!((rate - 500.0).abs() < 5.0, "{rate}");
  }
}
