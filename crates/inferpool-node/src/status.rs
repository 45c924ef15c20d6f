//! `BindingStatus`, `BindingWorkerStatus` and `BindingModelStatus`: what `status()` returns,
//! built from one snapshot of the core's counters.

use inferpool_core::{PoolStats, WorkerStats};
use inferpool_ort::{Generator, Provider, WorkerDevices};
use napi_derive::napi;

use crate::{
  enums::{BindingModelKind, BindingProvider, BindingWorkerState},
  numbers::{index, number},
};

/// One worker in `status()`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingWorkerStatus {
  /// Worker index.
  pub id: u32,
  /// `cpu` or `cuda:N`, as asked.
  pub device: String,
  /// The execution provider it runs on: its last loaded model's, before any load its device's.
  pub provider: BindingProvider,
  /// Why it runs on the CPU although it was given a GPU.
  pub fallback: Option<String>,
  /// Why its device could not start (it does no work).
  pub failure: Option<String>,
  /// What it is doing.
  pub state: BindingWorkerState,
  /// Models it holds, by index.
  pub loaded_models: Vec<u32>,
  /// Texts embedded.
  pub items: f64,
  /// Batches run (successful or not).
  pub batches: f64,
  /// Failed batches.
  pub errors: f64,
  /// Batches stolen from other workers.
  pub steals: f64,
  /// Batches that started while every other worker was idle and ran over their cores too.
  pub spread_batches: f64,
  /// Models loaded.
  pub loads: f64,
  /// Loads that evicted another model.
  pub switches: f64,
  /// Models evicted.
  pub evictions: f64,
  /// Estimated memory of the models it holds, bytes.
  pub memory_used: f64,
  /// Its memory budget, bytes (`Infinity` = unlimited).
  pub memory_budget: f64,
  /// Current token budget, padded tokens per batch.
  pub token_budget: f64,
  /// Time spent running batches, milliseconds.
  pub busy_ms: f64,
  /// Measured throughput (0 until the first batch).
  pub items_per_second: f64,
  /// Texts embedded per model, by index.
  pub model_items: Vec<f64>,
  /// Batches run per model, by index.
  pub model_batches: Vec<f64>,
}

/// One model in `status()`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingModelStatus {
  /// Its name.
  pub name: String,
  /// Width of its embeddings, once loaded.
  pub dimension: Option<u32>,
  /// Longest token sequence fed to it.
  pub max_length: u32,
  /// Workers holding it.
  pub loaded_on: Vec<u32>,
  /// Texts accepted and not yet embedded.
  pub outstanding: f64,
  /// Texts running now.
  pub in_flight: f64,
  /// Texts embedded.
  pub items: f64,
  /// Loads on any worker.
  pub loads: f64,
  /// Unloads on any worker (idle, requested, evicted).
  pub unloads: f64,
  /// Evictions.
  pub evictions: f64,
  /// Estimated memory of one loaded copy, bytes.
  pub memory_bytes: f64,
  /// Its priority.
  pub priority: i32,
  /// What it does.
  pub kind: BindingModelKind,
  /// A seq2seq model's decoding (absent for an embedding model).
  pub generation: Option<BindingGenerationStatus>,
}

/// A seq2seq model's decoding now and since the start.
#[napi(object)]
#[derive(Debug)]
pub struct BindingGenerationStatus {
  /// `merged`, `pair` or `no-past`.
  pub layout: String,
  /// Cohorts decoding now, over every worker.
  pub cohorts: f64,
  /// Prompts decoding now.
  pub rows: f64,
  /// Tokens generated since the start.
  pub tokens: f64,
  /// Decoder steps run since the start.
  pub steps: f64,
  /// Tokens per second lately.
  pub tokens_per_second: f64,
}

/// What `status()` returns.
#[napi(object)]
#[derive(Debug)]
pub struct BindingStatus {
  /// Texts accepted and not yet embedded (queued or running).
  pub outstanding: f64,
  /// Texts running now.
  pub in_flight: f64,
  /// Texts of calls waiting for room (`whenFull: 'wait'`), not yet accepted.
  pub waiting: f64,
  /// Per worker.
  pub workers: Vec<BindingWorkerStatus>,
  /// Per model.
  pub models: Vec<BindingModelStatus>,
}

impl BindingStatus {
  /// The status in `stats`; `max_lengths` by model index, `devices` by worker index.
  pub(crate) fn new(
    stats: &PoolStats,
    max_lengths: &[u32],
    devices: &WorkerDevices,
    generators: &[Option<Generator>],
  ) -> Self {
    let models = stats
      .models
      .iter()
      .enumerate()
      .map(|(m, model)| BindingModelStatus {
        name: model.name.clone(),
        dimension: model.dimension.map(index),
        max_length: max_lengths.get(m).copied().unwrap_or(0),
        loaded_on: model.loaded_on.iter().copied().map(index).collect(),
        outstanding: number(model.outstanding),
        in_flight: number(model.in_flight),
        items: number(model.items),
        loads: number(model.loads),
        unloads: number(model.unloads),
        evictions: number(model.evictions),
        memory_bytes: number(model.memory),
        priority: model.priority,
        kind: model.kind.into(),
        generation: model.generation.as_ref().map(|g| BindingGenerationStatus {
          layout: generators.get(m).and_then(Option::as_ref).map_or("", |g| g.layout).to_owned(),
          cohorts: number(g.cohorts),
          rows: number(g.rows),
          tokens: number(g.tokens),
          steps: number(g.steps),
          tokens_per_second: g.tokens_per_second,
        }),
      })
      .collect();
    Self {
      outstanding: number(stats.outstanding),
      in_flight: number(stats.in_flight),
      waiting: number(stats.waiting),
      workers: stats
        .workers
        .iter()
        .enumerate()
        .map(|(id, worker)| BindingWorkerStatus::new(id, worker, devices))
        .collect(),
      models,
    }
  }
}

impl BindingWorkerStatus {
  fn new(id: usize, w: &WorkerStats, devices: &WorkerDevices) -> Self {
    Self {
      id: index(id),
      device: devices.device(id).map(|d| d.to_string()).unwrap_or_default(),
      provider: w
        .provider
        .as_deref()
        .and_then(Provider::from_name)
        .unwrap_or_else(|| devices.provider(id))
        .into(),
      fallback: w.fallback.clone(),
      failure: w.failure.clone(),
      state: w.state.into(),
      loaded_models: (0..w.models.len()).filter(|&m| w.models[m].loaded).map(index).collect(),
      items: number(w.items),
      batches: number(w.batches),
      errors: number(w.errors),
      steals: number(w.steals),
      spread_batches: number(w.spread_batches),
      loads: number(w.loads),
      switches: number(w.switches),
      evictions: number(w.evictions),
      memory_used: number(w.memory_used),
      memory_budget: if w.memory_budget == u64::MAX {
        f64::INFINITY
      } else {
        number(w.memory_budget)
      },
      token_budget: number(w.token_budget),
      busy_ms: w.busy.as_secs_f64() * 1e3,
      items_per_second: w.items_per_second,
      model_items: w.models.iter().map(|m| number(m.items)).collect(),
      model_batches: w.models.iter().map(|m| number(m.batches)).collect(),
    }
  }
}
