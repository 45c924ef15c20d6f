//! Builds a running pool from a [`PoolSpec`]: resolves each model's files, loads its tokenizer,
//! estimates its memory, and starts the core's [`Pool`] with a factory of ONNX Runtime sessions.
//!
//! 1. Every model's files are found and its tokenizer loaded, in model order; the first failure
//!    is returned and nothing is started.
//! 2. The core's configuration comes from [`PoolSpec::config`] (one worker per device).
//! 3. [`Pool::with_models`] starts the workers and returns once the preloaded models are loaded
//!    (each worker builds its sessions on its own thread).
//!
//! It blocks for the whole start: call it off any event loop.

use std::sync::Arc;

use inferpool_core::{
  BackendError, BackendErrorKind, EventSink, ModelConfig, ModelKind, Models, Pool, Tokenize,
};

use crate::{
  backend::{Device, Provider, SessionOptions, SessionSpec, model_factory},
  model::{EmbeddingModel, ModelFiles},
  seq2seq::{Seq2SeqConfig, Seq2SeqFiles},
  spec::{ModelSpec, PoolSpec},
};

/// The device each worker was given. What a worker actually runs on, once it has loaded a
/// model, is in the core's [`inferpool_core::WorkerStats`].
#[derive(Clone, Debug)]
pub struct WorkerDevices {
  /// By worker index.
  devices: Vec<Device>,
}

impl WorkerDevices {
  /// The device worker `worker` was given.
  #[must_use]
  pub fn device(&self, worker: usize) -> Option<Device> {
    self.devices.get(worker).copied()
  }

  /// The provider of the device worker `worker` was given (the CPU for no such worker).
  #[must_use]
  pub fn provider(&self, worker: usize) -> Provider {
    self.device(worker).map_or(Provider::Cpu, Device::provider)
  }
}

/// What turns a seq2seq model's tokens into text, and its configuration.
#[derive(Clone, Debug)]
pub struct Generator {
  /// The model's tokenizer (decoding).
  pub tokenizer: Arc<tokenizers::Tokenizer>,
  /// What its `config.json` says.
  pub config: Seq2SeqConfig,
  /// `merged`, `pair` or `no-past`.
  pub layout: &'static str,
}

/// A started pool and what its spec resolved to.
#[derive(Debug)]
pub struct BuiltPool {
  /// The running pool.
  pub pool: Pool,
  /// Longest token sequence fed to each model, by model index.
  pub max_lengths: Vec<usize>,
  /// Each worker's device.
  pub workers: WorkerDevices,
  /// Per model: how its tokens become text, for a seq2seq model.
  pub generators: Vec<Option<Generator>>,
}

/// One model, ready for the core: its configuration (with its tokenizer) and its sessions.
struct Prepared {
  config: ModelConfig,
  session: SessionSpec,
  max_length: usize,
  generator: Option<Generator>,
}

/// Resolves `spec`'s files and loads its tokenizer. `threads`: intra-op threads of each worker's
/// session and of the model's lone session.
fn prepare(
  spec: ModelSpec,
  (intra_threads, lone_threads): (usize, usize),
) -> Result<Prepared, BackendError> {
  let seq2seq = if spec.path.is_dir() && Seq2SeqFiles::detect(&spec.path) {
    let files = Seq2SeqFiles::resolve(&spec.path)?;
    let config = files.config()?;
    Some((files, config))
  } else {
    None
  };
  if spec.kind == Some(ModelKind::Seq2Seq) && seq2seq.is_none() {
    // Resolving says what is missing.
    Seq2SeqFiles::resolve(&spec.path)?;
  }
  if spec.kind == Some(ModelKind::Embedding)
    && let Some((files, _)) = &seq2seq
  {
    return Err(BackendError::new(
      BackendErrorKind::Model,
      format!(
        "{} is a seq2seq export (it has {}), not an embedding model",
        files.dir.display(),
        files.encoder.display()
      ),
    ));
  }
  let files = match &seq2seq {
    Some((s, _)) => ModelFiles {
      dir: s.dir.clone(),
      onnx: s.encoder.clone(),
      tokenizer: s.dir.join("tokenizer.json"),
    },
    None => ModelFiles::resolve(&spec.path)?,
  };
  let model = EmbeddingModel::load(files, spec.max_length)?;
  let memory = spec.memory_bytes.unwrap_or_else(|| match &seq2seq {
    Some((s, _)) => s.weight_bytes(),
    None => model.files.weight_bytes(),
  });
  let generator = seq2seq.as_ref().map(|(files, config)| Generator {
    tokenizer: Arc::new(model.tokenizer().clone()),
    config: config.clone(),
    layout: files.layout.name(),
  });
  let kind = if seq2seq.is_some() { ModelKind::Seq2Seq } else { ModelKind::Embedding };
  let session = SessionSpec {
    seq2seq,
    onnx: model.files.onnx.clone(),
    options: SessionOptions {
      intra_threads,
      lone_threads,
      pooling: spec.pooling,
      normalize: spec.normalize,
    },
  };
  let max_length = model.max_length;
  let config = ModelConfig {
    priority: spec.priority,
    workers: spec.workers,
    memory,
    kind,
    ..ModelConfig::new(spec.name, Arc::new(model) as Arc<dyn Tokenize>)
  };
  Ok(Prepared { config, session, max_length, generator })
}

/// Builds and starts the pool `spec` describes; `events` receives model and worker events from
/// the start on. Blocks until the preloaded models are loaded on every worker that may hold
/// them (see the module documentation for the order of the steps).
pub fn build_pool(spec: PoolSpec, events: Option<EventSink>) -> Result<BuiltPool, BackendError> {
  let config = spec.config()?;
  let mut configs = Vec::with_capacity(spec.models.len());
  let mut sessions = Vec::with_capacity(spec.models.len());
  let mut max_lengths = Vec::with_capacity(spec.models.len());
  let mut generators = Vec::with_capacity(spec.models.len());
  // A lone batch may use every thread the CPU workers have together, up to the cores there are.
  let cpu_workers = spec.devices.iter().filter(|d| **d == Device::Cpu).count();
  let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
  let lone_threads = (cpu_workers * spec.intra_op_threads).min(cores);
  for model in spec.models {
    let prepared = prepare(model, (spec.intra_op_threads, lone_threads))?;
    configs.push(prepared.config);
    sessions.push(prepared.session);
    max_lengths.push(prepared.max_length);
    generators.push(prepared.generator);
  }
  let workers = WorkerDevices { devices: spec.devices };
  let models = Models {
    models: configs,
    factory: model_factory(sessions, workers.devices.clone(), spec.cpu_fallback),
    preload: spec.preload,
    events,
  };
  let pool = Pool::with_models(&config, models)?;
  Ok(BuiltPool { pool, max_lengths, workers, generators })
}

#[cfg(test)]
mod tests {
  use inferpool_core::{BackendErrorKind, CloseMode};

  use super::*;
  use crate::test_folder::ModelFolder;

  /// `models` on `devices`, nothing preloaded: no session is built, so no ONNX Runtime needed.
  fn spec(models: Vec<ModelSpec>, devices: Vec<Device>) -> PoolSpec {
    PoolSpec { preload: Vec::new(), devices, ..PoolSpec::new(models) }
  }

  #[test]
  fn resolves_every_model_and_reports_its_length_and_memory() {
    let (a, b) = (ModelFolder::new(1000), ModelFolder::new(10));
    let mut second = ModelSpec::new("b", b.dir());
    second.max_length = Some(16);
    second.memory_bytes = Some(123);
    second.priority = 2;
    second.workers = Some(vec![1]);
    let built =
      build_pool(spec(vec![ModelSpec::new("a", a.dir()), second], vec![Device::Cpu; 2]), None)
        .unwrap();
    assert_eq!(built.max_lengths, vec![64, 16]);
    let stats = built.pool.stats();
    assert_eq!(stats.models.len(), 2);
    assert_eq!((stats.models[0].name.as_str(), stats.models[0].memory), ("a", 1000));
    assert_eq!((stats.models[1].name.as_str(), stats.models[1].memory), ("b", 123));
    assert_eq!(stats.models[1].priority, 2);
    assert_eq!(stats.workers.len(), 2);
    built.pool.close(CloseMode::Cancel);
  }

  #[test]
  fn workers_report_their_device_and_provider() {
    let a = ModelFolder::new(10);
    let devices = vec![Device::Cpu, Device::Cuda(3)];
    let built = build_pool(spec(vec![ModelSpec::new("a", a.dir())], devices), None).unwrap();
    let workers = &built.workers;
    assert_eq!(workers.device(0), Some(Device::Cpu));
    assert_eq!(workers.device(1), Some(Device::Cuda(3)));
    assert_eq!(workers.device(2), None);
    assert_eq!(workers.provider(0), Provider::Cpu);
    assert_eq!(workers.provider(1), Provider::Cuda);
    assert_eq!(Provider::Cuda.as_str(), "cuda");
    assert_eq!(Provider::from_name("cuda"), Some(Provider::Cuda));
    assert_eq!(Provider::from_name("tpu"), None);
    // Nothing loaded: the core knows of no provider yet.
    assert!(built.pool.stats().workers.iter().all(|w| w.provider.is_none()));
    built.pool.close(CloseMode::Cancel);
  }

  #[test]
  fn a_missing_model_fails_before_anything_starts() {
    let a = ModelFolder::new(10);
    let models =
      vec![ModelSpec::new("a", a.dir()), ModelSpec::new("gone", "/nonexistent/inferpool/model")];
    let error = build_pool(spec(models, vec![Device::Cpu]), None).unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::ModelNotFound);
    assert!(error.message.contains("/nonexistent/inferpool/model"), "{error}");
  }

  #[test]
  fn no_device_is_invalid_input() {
    let a = ModelFolder::new(10);
    let error = build_pool(spec(vec![ModelSpec::new("a", a.dir())], Vec::new()), None).unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::InvalidInput);
  }

  #[test]
  fn the_core_checks_what_it_owns() {
    let a = ModelFolder::new(10);
    let mut bad = spec(vec![ModelSpec::new("a", a.dir())], vec![Device::Cpu]);
    bad.preload = vec![5];
    let error = build_pool(bad, None).unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::InvalidInput, "{error}");
  }
}
