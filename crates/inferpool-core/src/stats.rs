//! What a pool reports about itself: per worker, per model and in total, read without locks.

use std::{sync::atomic::Ordering, time::Duration};

use crate::{HistogramSnapshot, scheduler::registry::Registry};

/// What a worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
  /// Waiting for work.
  Idle,
  /// Running a batch.
  Busy,
  /// Loading a model.
  Loading,
  /// Pausing after a failed batch.
  BackingOff,
  /// Its batches failed `max_attempts` times in a row (it retries after each back-off), or its
  /// device could not start (it does no work; [`WorkerStats::failure`] says why).
  Failed,
  /// Exited.
  Stopped,
}

impl WorkerState {
  pub(crate) fn from_u8(v: u8) -> Self {
    match v {
      0 => Self::Idle,
      1 => Self::Busy,
      2 => Self::Loading,
      3 => Self::BackingOff,
      4 => Self::Failed,
      _ => Self::Stopped,
    }
  }

  pub(crate) fn serves(self) -> bool {
    matches!(self, Self::Idle | Self::Busy)
  }
}

/// One model on one worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerModelStats {
  /// Whether the worker has it loaded now.
  pub loaded: bool,
  /// Items of it the worker ran successfully.
  pub items: u64,
  /// Batches of it the worker ran (successful or not).
  pub batches: u64,
  /// Run time of those batches, seconds.
  pub inference: HistogramSnapshot,
  /// Items per batch.
  pub batch_size: HistogramSnapshot,
}

/// Counters of one worker since the pool started.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerStats {
  /// What it is doing now.
  pub state: WorkerState,
  /// Items it ran successfully.
  pub items: u64,
  /// Batches it ran (successful or not).
  pub batches: u64,
  /// Batches that failed.
  pub errors: u64,
  /// Successful steals from other workers.
  pub steals: u64,
  /// Batches that started while every other worker was idle and that the backend spread over
  /// their cores ([`crate::Backend::run_alone`]).
  pub spread_batches: u64,
  /// Current token budget (of the model it ran last): `max_batch_tokens`, lowered while its
  /// batches are slower than the latency target or after an out-of-memory error.
  pub token_budget: usize,
  /// Time spent running batches.
  pub busy: Duration,
  /// Measured throughput, items per second (0 until it has run a batch).
  pub items_per_second: f64,
  /// Models it loaded.
  pub loads: u64,
  /// Loads that evicted another model.
  pub switches: u64,
  /// Models it evicted.
  pub evictions: u64,
  /// Estimated memory of the models it holds, bytes.
  pub memory_used: u64,
  /// Its memory budget, bytes (`u64::MAX` = unlimited).
  pub memory_budget: u64,
  /// Why its device could not start, when it could not.
  pub failure: Option<String>,
  /// What the backend it loaded last runs on ([`crate::Placement::provider`]); `None` before
  /// any load.
  pub provider: Option<String>,
  /// Why it runs elsewhere than its device was meant to, once a backend of it reported so
  /// ([`crate::Placement::fallback`]).
  pub fallback: Option<String>,
  /// Per model, by index.
  pub models: Vec<WorkerModelStats>,
}

/// Counters of one model since the pool started.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelStats {
  /// Its name.
  pub name: String,
  /// Width of its rows, once it has been loaded.
  pub dimension: Option<usize>,
  /// Workers holding it now.
  pub loaded_on: Vec<usize>,
  /// Items accepted and not yet completed.
  pub outstanding: usize,
  /// Items running now.
  pub in_flight: usize,
  /// Items completed successfully.
  pub items: u64,
  /// Loads on any worker.
  pub loads: u64,
  /// Unloads on any worker (idle, requested or evicted).
  pub unloads: u64,
  /// Unloads to make room for another model.
  pub evictions: u64,
  /// Estimated memory of one loaded copy, bytes.
  pub memory: u64,
  /// Its priority.
  pub priority: i32,
  /// Per item: admission to the start of its batch, seconds.
  pub queue_wait: HistogramSnapshot,
  /// Per request: tokenizing its texts, seconds.
  pub tokenize: HistogramSnapshot,
  /// Per request: `submit` to its answer, seconds.
  pub end_to_end: HistogramSnapshot,
  /// What it does.
  pub kind: crate::ModelKind,
  /// Its generation counters (a seq2seq model's; `None` for an embedding model).
  pub generation: Option<GenerationStats>,
}

/// A seq2seq model's decoding now and since the start.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationStats {
  /// Cohorts decoding now, over every worker.
  pub cohorts: usize,
  /// Rows (prompts) decoding now.
  pub rows: usize,
  /// Tokens generated since the start (EOS excluded).
  pub tokens: u64,
  /// Decoder steps run since the start.
  pub steps: u64,
  /// Tokens per second lately (a rate that halves every 2 s without new tokens).
  pub tokens_per_second: f64,
  /// Per row: admission to its first token, seconds.
  pub first_token: HistogramSnapshot,
  /// Per token after a row's first: the time since its previous token, seconds.
  pub per_token: HistogramSnapshot,
}

impl ModelStats {
  /// Items waiting for a worker.
  #[must_use]
  pub fn queued(&self) -> usize {
    self.outstanding.saturating_sub(self.in_flight)
  }
}

/// Counters and queue depth of the whole pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStats {
  /// Items accepted and not yet completed (queued or running).
  pub outstanding: usize,
  /// Items running now.
  pub in_flight: usize,
  /// Items of requests waiting for room (`wait_when_full`), not yet accepted.
  pub waiting: usize,
  /// Per worker.
  pub workers: Vec<WorkerStats>,
  /// Per model.
  pub models: Vec<ModelStats>,
}

impl PoolStats {
  /// Items waiting for a worker.
  #[must_use]
  pub fn queued(&self) -> usize {
    self.outstanding.saturating_sub(self.in_flight)
  }

  /// Batches run by every worker.
  #[must_use]
  pub fn batches(&self) -> u64 {
    self.workers.iter().map(|w| w.batches).sum()
  }

  /// Items run by every worker.
  #[must_use]
  pub fn items(&self) -> u64 {
    self.workers.iter().map(|w| w.items).sum()
  }

  /// Failed batches of every worker.
  #[must_use]
  pub fn failed_batches(&self) -> u64 {
    self.workers.iter().map(|w| w.errors).sum()
  }
}

impl Registry {
  /// Counters and queue depth now.
  pub(crate) fn stats(&self) -> PoolStats {
    let r = self;
    let workers: Vec<WorkerStats> = r
      .workers
      .iter()
      .enumerate()
      .map(|(index, w)| WorkerStats {
        state: w.state(),
        items: w.items.load(Ordering::Relaxed),
        batches: w.batches.load(Ordering::Relaxed),
        errors: w.errors.load(Ordering::Relaxed),
        steals: w.steals.load(Ordering::Relaxed),
        spread_batches: w.spread_batches.load(Ordering::Relaxed),
        token_budget: w.token_budget.load(Ordering::Relaxed),
        busy: Duration::from_nanos(w.busy_nanos.load(Ordering::Relaxed)),
        items_per_second: f64::from_bits(w.speed.load(Ordering::Relaxed)),
        loads: w.loads.load(Ordering::Relaxed),
        switches: w.switches.load(Ordering::Relaxed),
        evictions: w.evictions.load(Ordering::Relaxed),
        memory_used: w.memory_used.load(Ordering::Relaxed),
        memory_budget: r.config.budget(index),
        failure: w.failure.get().cloned(),
        provider: w.provider(),
        fallback: w.fallback.get().cloned(),
        models: w
          .models
          .iter()
          .enumerate()
          .map(|(model, m)| WorkerModelStats {
            loaded: w.holds(model),
            items: m.items.load(Ordering::Relaxed),
            batches: m.batches.load(Ordering::Relaxed),
            inference: m.histograms.inference.snapshot(),
            batch_size: m.histograms.batch_size.snapshot(),
          })
          .collect(),
      })
      .collect();
    let models: Vec<ModelStats> = r
      .models
      .iter()
      .enumerate()
      .map(|(index, m)| ModelStats {
        name: m.config.name.clone(),
        dimension: m.dimension.get().copied(),
        loaded_on: (0..workers.len()).filter(|&w| workers[w].models[index].loaded).collect(),
        outstanding: m.outstanding.items.load(Ordering::Relaxed),
        in_flight: m.in_flight.load(Ordering::Relaxed),
        items: m.items.load(Ordering::Relaxed),
        loads: m.loads.load(Ordering::Relaxed),
        unloads: m.unloads.load(Ordering::Relaxed),
        evictions: m.evictions.load(Ordering::Relaxed),
        memory: m.config.memory,
        priority: m.config.priority,
        queue_wait: m.histograms.queue_wait.snapshot(),
        tokenize: m.histograms.tokenize.snapshot(),
        end_to_end: m.histograms.end_to_end.snapshot(),
        kind: m.config.kind,
        generation: (m.config.kind == crate::ModelKind::Seq2Seq).then(|| {
          let g = &m.generation;
          GenerationStats {
            cohorts: g.cohorts.load(Ordering::Relaxed),
            rows: g.rows.load(Ordering::Relaxed),
            tokens: g.tokens.load(Ordering::Relaxed),
            steps: g.steps.load(Ordering::Relaxed),
            tokens_per_second: g.rate(std::time::Instant::now()),
            first_token: g.first_token.snapshot(),
            per_token: g.per_token.snapshot(),
          }
        }),
      })
      .collect();
    PoolStats {
      outstanding: r.outstanding.items.load(Ordering::Relaxed),
      in_flight: models.iter().map(|m| m.in_flight).sum(),
      waiting: r.admission.items.load(Ordering::Relaxed),
      workers,
      models,
    }
  }
}
