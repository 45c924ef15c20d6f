//! How a pool runs: its configuration and limits.

use std::time::Duration;

use crate::BatchPolicy;

/// Most models, and most workers, in one pool (both are bit sets).
pub const MAX_MODELS: usize = 64;

/// How the pool runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
  /// Number of worker threads; each loads its own backends.
  pub workers: usize,
  /// Limits for every batch.
  pub policy: BatchPolicy,
  /// Most items accepted and not yet completed; a request beyond it fails at once with
  /// [`crate::PoolError::Overloaded`].
  pub max_queued_items: usize,
  /// Runs an item may fail before its request gets the error.
  pub max_attempts: u32,
  /// First back-off after a failed batch; doubles per consecutive failure.
  pub backoff_initial: Duration,
  /// Longest back-off.
  pub backoff_max: Duration,
  /// Memory each worker may fill with loaded models, bytes, by worker index (a missing entry
  /// is unlimited).
  pub memory_budget: Vec<u64>,
  /// A model unused this long on a worker is unloaded there.
  pub idle_timeout: Option<Duration>,
  /// Most loads that evict another model, per worker, in any hour.
  pub max_switches_per_hour: Option<u32>,
  /// How long a model's queued work may go unserved, while no worker holds it, before a worker
  /// busy with another model of the same priority switches to it.
  pub switch_delay: Duration,
  /// A worker whose device fails while it preloads ([`crate::BackendErrorKind::Device`]) is marked
  /// [`crate::WorkerState::Failed`] and the pool starts without it (instead of failing to start), as
  /// long as every model keeps a worker.
  pub tolerate_device_failures: bool,
  /// A request that would exceed `max_queued_items` waits, in submission order, until earlier
  /// work completes and it fits (`scheduler::admission`), instead of failing with
  /// [`crate::PoolError::Overloaded`]. A request larger than `max_queued_items` alone fails either way.
  pub wait_when_full: bool,
}

impl Default for PoolConfig {
  fn default() -> Self {
    Self {
      workers: 1,
      policy: BatchPolicy::default(),
      max_queued_items: 1 << 20,
      max_attempts: 3,
      backoff_initial: Duration::from_millis(10),
      backoff_max: Duration::from_secs(2),
      memory_budget: Vec::new(),
      idle_timeout: None,
      max_switches_per_hour: None,
      switch_delay: Duration::from_millis(100),
      tolerate_device_failures: false,
      wait_when_full: false,
    }
  }
}

impl PoolConfig {
  /// Worker `worker`'s memory budget, bytes (`u64::MAX` = unlimited).
  pub(crate) fn budget(&self, worker: usize) -> u64 {
    self.memory_budget.get(worker).copied().unwrap_or(u64::MAX)
  }

  /// Whether `model` may load on worker `worker` and fits its whole budget.
  pub(crate) fn fits(&self, model: &crate::ModelConfig, worker: usize) -> bool {
    model.allows(worker) && model.memory <= self.budget(worker)
  }

  /// The pause after `failures` consecutive failures (at least 1): `backoff_initial ×
  /// 2^(failures-1)`, at most `backoff_max`.
  pub(crate) fn backoff(&self, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    self.backoff_initial.saturating_mul(1 << exponent).min(self.backoff_max)
  }
}

/// What `close` does with items still queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
  /// Run everything already accepted, then stop.
  Drain,
  /// Fail every queued item with [`crate::PoolError::Closed`]; batches already running finish.
  Cancel,
}
