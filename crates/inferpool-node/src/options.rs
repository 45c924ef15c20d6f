//! `BindingPoolOptions` and `BindingModelSpec`: the options of `createPool`, already validated
//! and resolved by the TypeScript layer, and their conversion to an [`PoolSpec`];
//! `BindingCallOptions`: the options of one `embed` call.

use std::time::Duration;

use inferpool_core::GenerateParams;
use inferpool_ort::{Device, ModelSpec, PoolSpec};
use napi_derive::napi;

use crate::{
  enums::{BindingModelKind, BindingPooling},
  errors::{BindingErrorCode, Result, coded},
  numbers::saturating_u64,
  priority::BindingPriority,
};

/// The options of one `embed` call, already validated by the TypeScript layer.
#[napi(object)]
#[derive(Clone, Copy, Debug)]
pub struct BindingCallOptions {
  /// Its queue class.
  pub priority: BindingPriority,
  /// Texts not started within this many milliseconds are not run.
  pub timeout_ms: Option<u32>,
  /// Texts between two progress reports (1 when absent).
  pub progress_every: Option<u32>,
  /// Keep each text's token count for the call's `tokenCounts()`.
  pub count_tokens: bool,
}

/// One model of `createPool`, already validated and resolved by the TypeScript layer.
#[napi(object)]
#[derive(Debug)]
pub struct BindingModelSpec {
  /// Its name.
  pub name: String,
  /// A model folder or ONNX file.
  pub path: String,
  /// How token states become one vector per text.
  pub pooling: BindingPooling,
  /// Scale results to unit length.
  pub normalize: bool,
  /// Override of the model's maximum sequence length.
  pub max_length: Option<u32>,
  /// Higher runs first when workers are scarce, and is evicted last.
  pub priority: i32,
  /// The workers (by index) that may load it; all when absent.
  pub workers: Option<Vec<u32>>,
  /// Estimated memory of one loaded copy, bytes; the size of its ONNX files when absent.
  pub memory_bytes: Option<f64>,
  /// What it must be; whatever its folder holds when absent.
  pub kind: Option<BindingModelKind>,
}

/// The options of one `generate` call, already validated by the TypeScript layer.
#[napi(object)]
#[derive(Clone, Debug)]
pub struct BindingGenerateOptions {
  /// Its queue class.
  pub priority: BindingPriority,
  /// Prompts not started within this many milliseconds are not run.
  pub timeout_ms: Option<u32>,
  /// Prompts between two progress reports (1 when absent).
  pub progress_every: Option<u32>,
  /// Most tokens per prompt; the model's `generation_config.json` says, else 64, when absent.
  pub max_new_tokens: Option<u32>,
  /// EOS cannot end a prompt's text before this many tokens.
  pub min_new_tokens: u32,
  /// 0 = greedy.
  pub temperature: f64,
  /// 0 = no top-k cut.
  pub top_k: u32,
  /// 1 = no nucleus cut.
  pub top_p: f64,
  /// 1 = no penalty.
  pub repetition_penalty: f64,
  /// Seed of the sampling (an integer below 2^53).
  pub seed: Option<f64>,
  /// Stop sequences.
  pub stop: Vec<String>,
}

/// `maxNewTokens` when neither the call nor the model's `generation_config.json` says.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;

impl BindingGenerateOptions {
  /// The core's parameters; `model_max_new_tokens` is what the model's generation config says.
  #[expect(clippy::cast_possible_truncation, reason = "validated ranges in the TypeScript layer")]
  pub(crate) fn params(&self, model_max_new_tokens: Option<usize>) -> GenerateParams {
    let options = self;
    GenerateParams {
      max_new_tokens: options
        .max_new_tokens
        .map_or(model_max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS), |n| n as usize),
      min_new_tokens: options.min_new_tokens as usize,
      temperature: options.temperature as f32,
      top_k: options.top_k as usize,
      top_p: options.top_p as f32,
      repetition_penalty: options.repetition_penalty as f32,
      seed: options.seed.map(saturating_u64),
    }
  }
}

/// Options of `createPool`, already validated and resolved by the TypeScript layer.
#[napi(object)]
#[derive(Debug)]
pub struct BindingPoolOptions {
  /// The models, by index.
  pub models: Vec<BindingModelSpec>,
  /// Models loaded on every worker that may hold them before the pool starts.
  pub preload: Vec<u32>,
  /// `cpu` or `cuda:N`, one entry per worker.
  pub devices: Vec<String>,
  /// Memory budget of each worker, bytes (`Infinity` = unlimited).
  pub memory_budgets: Vec<f64>,
  /// ONNX Runtime intra-op threads per session.
  pub intra_op_threads: u32,
  /// Most items in one batch.
  pub max_batch_size: u32,
  /// Most padded tokens in one batch.
  pub max_batch_tokens: u32,
  /// Most items accepted and not yet completed.
  pub max_queued_items: u32,
  /// How long an idle worker may hold a partial batch open, in milliseconds.
  pub max_wait_ms: u32,
  /// Whether a GPU worker whose session cannot be built runs on the CPU instead.
  pub cpu_fallback: bool,
  /// Whether such a worker is marked failed and the pool starts without it.
  pub tolerate_device_failures: bool,
  /// Whether a call beyond `maxQueuedItems` waits for room (in call order) instead of failing
  /// with `OVERLOADED`.
  pub wait_when_full: bool,
  /// A model unused this long on a worker is unloaded there, milliseconds.
  pub idle_timeout_ms: Option<f64>,
  /// Most loads that evict another model, per worker and hour.
  pub max_switches_per_hour: Option<u32>,
  /// How long a model's work may go unserved before a busy worker switches to it, ms.
  pub switch_delay_ms: u32,
}

/// A memory budget in bytes: any number that is not finite (`Infinity`) is unlimited.
fn budget(bytes: f64) -> u64 {
  if bytes.is_finite() { saturating_u64(bytes) } else { u64::MAX }
}

fn indices(list: Vec<u32>) -> Vec<usize> {
  list.into_iter().map(|i| i as usize).collect()
}

impl TryFrom<BindingModelSpec> for ModelSpec {
  type Error = napi::Error<BindingErrorCode>;

  fn try_from(spec: BindingModelSpec) -> Result<Self> {
    Ok(Self {
      pooling: spec.pooling.into(),
      normalize: spec.normalize,
      max_length: spec.max_length.map(|n| n as usize),
      priority: spec.priority,
      workers: spec.workers.map(indices),
      memory_bytes: spec.memory_bytes.map(saturating_u64),
      kind: spec.kind.map(Into::into),
      ..Self::new(spec.name, spec.path)
    })
  }
}

impl TryFrom<BindingPoolOptions> for PoolSpec {
  type Error = napi::Error<BindingErrorCode>;

  fn try_from(options: BindingPoolOptions) -> Result<Self> {
    let devices = options
      .devices
      .iter()
      .map(|d| d.parse::<Device>().map_err(|e| coded(BindingErrorCode::InvalidInput, e)))
      .collect::<Result<Vec<_>>>()?;
    let models = options.models.into_iter().map(ModelSpec::try_from).collect::<Result<_>>()?;
    Ok(Self {
      models,
      preload: indices(options.preload),
      devices,
      memory_budgets: options.memory_budgets.into_iter().map(budget).collect(),
      intra_op_threads: options.intra_op_threads as usize,
      max_batch_size: options.max_batch_size as usize,
      max_batch_tokens: options.max_batch_tokens as usize,
      max_wait: Duration::from_millis(u64::from(options.max_wait_ms)),
      max_queued_items: options.max_queued_items as usize,
      wait_when_full: options.wait_when_full,
      cpu_fallback: options.cpu_fallback,
      tolerate_device_failures: options.tolerate_device_failures,
      idle_timeout: options.idle_timeout_ms.map(|ms| Duration::from_millis(saturating_u64(ms))),
      max_switches_per_hour: options.max_switches_per_hour,
      switch_delay: Duration::from_millis(u64::from(options.switch_delay_ms)),
    })
  }
}
