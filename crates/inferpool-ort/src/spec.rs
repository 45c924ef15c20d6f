//! What a pool is built from, in plain Rust: the models, the workers' devices and budgets, the
//! batch and admission limits. [`crate::build_pool`] turns a [`PoolSpec`] into a running pool.
//!
//! The translation into the core's [`PoolConfig`] is a pure function ([`PoolSpec::config`]), so
//! it is tested without ONNX Runtime.

use std::{path::PathBuf, time::Duration};

use inferpool_core::{BackendError, BackendErrorKind, BatchPolicy, PoolConfig};

use crate::{backend::Device, pooling::Pooling};

/// One model of a pool.
#[derive(Clone, Debug)]
pub struct ModelSpec {
  /// Its name, for events and status.
  pub name: String,
  /// A model folder or an ONNX file inside one ([`crate::ModelFiles::resolve`]).
  pub path: PathBuf,
  /// Token states → one vector.
  pub pooling: Pooling,
  /// Scale every result to unit length.
  pub normalize: bool,
  /// Override of the model's maximum sequence length ([`crate::EmbeddingModel::load`]).
  pub max_length: Option<usize>,
  /// Higher runs first when workers are scarce, and is evicted last.
  pub priority: i32,
  /// The workers (by index) that may load it; `None` = every worker.
  pub workers: Option<Vec<usize>>,
  /// Estimated memory of one loaded copy, bytes; `None` = the size of its ONNX files
  /// ([`crate::ModelFiles::weight_bytes`]).
  pub memory_bytes: Option<u64>,
  /// What the model must be; `None` = whatever its folder holds (an `encoder_model.onnx`
  /// makes it a seq2seq model).
  pub kind: Option<inferpool_core::ModelKind>,
}

impl ModelSpec {
  /// A model every worker may load: mean pooling, normalised, its own maximum length, priority
  /// 0, its memory estimated from its files.
  pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
    Self {
      name: name.into(),
      path: path.into(),
      pooling: Pooling::Mean,
      normalize: true,
      max_length: None,
      priority: 0,
      workers: None,
      memory_bytes: None,
      kind: None,
    }
  }
}

/// Everything [`crate::build_pool`] needs.
#[derive(Clone, Debug)]
pub struct PoolSpec {
  /// The models, by index.
  pub models: Vec<ModelSpec>,
  /// Models loaded on every worker that may hold them before the pool starts.
  pub preload: Vec<usize>,
  /// One entry per worker: the device it runs on.
  pub devices: Vec<Device>,
  /// Memory budget of each worker, bytes, by worker index (`u64::MAX` or a missing entry =
  /// unlimited).
  pub memory_budgets: Vec<u64>,
  /// ONNX Runtime intra-op threads per session.
  pub intra_op_threads: usize,
  /// Most items in one batch.
  pub max_batch_size: usize,
  /// Most padded tokens in one batch.
  pub max_batch_tokens: usize,
  /// How long an idle worker may hold a partial batch open.
  pub max_wait: Duration,
  /// Most items accepted and not yet completed.
  pub max_queued_items: usize,
  /// A call beyond `max_queued_items` waits for room (in call order) instead of failing.
  pub wait_when_full: bool,
  /// A GPU worker whose session cannot be built runs on the CPU instead, and says why
  /// ([`inferpool_core::WorkerStats::fallback`]).
  pub cpu_fallback: bool,
  /// A worker whose device fails while it preloads is marked failed and the pool starts
  /// without it (unless a model is left with no worker).
  pub tolerate_device_failures: bool,
  /// A model unused this long on a worker is unloaded there.
  pub idle_timeout: Option<Duration>,
  /// Most loads that evict another model, per worker and hour.
  pub max_switches_per_hour: Option<u32>,
  /// How long a model's work may go unserved before a busy worker switches to it.
  pub switch_delay: Duration,
}

impl PoolSpec {
  /// `models` on one CPU worker, the first one preloaded, with the core's default limits.
  #[must_use]
  pub fn new(models: Vec<ModelSpec>) -> Self {
    let core = PoolConfig::default();
    Self {
      preload: if models.is_empty() { Vec::new() } else { vec![0] },
      models,
      devices: vec![Device::Cpu],
      memory_budgets: Vec::new(),
      intra_op_threads: 1,
      max_batch_size: core.policy.max_batch_size,
      max_batch_tokens: core.policy.max_batch_tokens,
      max_wait: core.policy.max_wait,
      max_queued_items: core.max_queued_items,
      wait_when_full: core.wait_when_full,
      cpu_fallback: false,
      tolerate_device_failures: core.tolerate_device_failures,
      idle_timeout: core.idle_timeout,
      max_switches_per_hour: core.max_switches_per_hour,
      switch_delay: core.switch_delay,
    }
  }

  /// The core's configuration of this pool: one worker per device; limits below 1 are raised to
  /// 1. Fails with [`BackendErrorKind::InvalidInput`] when there is no device.
  pub fn config(&self) -> Result<PoolConfig, BackendError> {
    if self.devices.is_empty() {
      return Err(BackendError::new(
        BackendErrorKind::InvalidInput,
        "at least one worker is needed",
      ));
    }
    Ok(PoolConfig {
      workers: self.devices.len(),
      policy: BatchPolicy {
        max_batch_size: self.max_batch_size.max(1),
        max_batch_tokens: self.max_batch_tokens.max(1),
        max_wait: self.max_wait,
        ..BatchPolicy::default()
      },
      max_queued_items: self.max_queued_items.max(1),
      memory_budget: self.memory_budgets.clone(),
      idle_timeout: self.idle_timeout,
      max_switches_per_hour: self.max_switches_per_hour,
      switch_delay: self.switch_delay,
      tolerate_device_failures: self.tolerate_device_failures,
      wait_when_full: self.wait_when_full,
      ..PoolConfig::default()
    })
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn one_worker_per_device_and_limits_of_at_least_one() {
    let mut spec = PoolSpec::new(vec![ModelSpec::new("m", "/models/m")]);
    spec.devices = vec![Device::Cpu, Device::Cuda(0), Device::Cuda(1)];
    spec.max_batch_size = 0;
    spec.max_batch_tokens = 0;
    spec.max_queued_items = 0;
    spec.memory_budgets = vec![10, u64::MAX, 30];
    spec.max_wait = Duration::from_millis(5);
    spec.idle_timeout = Some(Duration::from_secs(60));
    spec.max_switches_per_hour = Some(7);
    spec.switch_delay = Duration::from_millis(250);
    spec.wait_when_full = true;
    spec.tolerate_device_failures = true;
    let config = spec.config().unwrap();
    assert_eq!(config.workers, 3);
    assert_eq!(config.policy.max_batch_size, 1);
    assert_eq!(config.policy.max_batch_tokens, 1);
    assert_eq!(config.policy.max_wait, Duration::from_millis(5));
    assert_eq!(config.policy.window, BatchPolicy::default().window);
    assert_eq!(config.max_queued_items, 1);
    assert_eq!(config.memory_budget, vec![10, u64::MAX, 30]);
    assert_eq!(config.idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(config.max_switches_per_hour, Some(7));
    assert_eq!(config.switch_delay, Duration::from_millis(250));
    assert!(config.wait_when_full);
    assert!(config.tolerate_device_failures);
    assert_eq!(config.max_attempts, PoolConfig::default().max_attempts);
  }

  #[test]
  fn the_defaults_are_the_cores() {
    let spec = PoolSpec::new(vec![ModelSpec::new("m", "/models/m")]);
    assert_eq!(spec.preload, vec![0]);
    let (config, core) = (spec.config().unwrap(), PoolConfig::default());
    assert_eq!(config.workers, 1);
    assert_eq!(config.policy.max_batch_size, core.policy.max_batch_size);
    assert_eq!(config.policy.max_batch_tokens, core.policy.max_batch_tokens);
    assert_eq!(config.max_queued_items, core.max_queued_items);
    assert_eq!(config.switch_delay, core.switch_delay);
    assert!(!config.wait_when_full);
  }

  #[test]
  fn no_device_is_invalid_input() {
    let mut spec = PoolSpec::new(vec![ModelSpec::new("m", "/models/m")]);
    spec.devices.clear();
    let error = spec.config().unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::InvalidInput);
    assert!(error.message.contains("at least one worker"), "{error}");
  }
}
