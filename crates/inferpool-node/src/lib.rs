//! Node.js binding of inferpool: `#[napi]` types, conversion and error mapping only.
//!
//! Errors cross into JavaScript with their code as a prefix of the message (`CODE: message`);
//! the TypeScript layer turns them into `PoolError` with that `code`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use inferpool_core::{
  BackendError, BackendErrorKind, BatchPolicy, Cancellations, CloseMode, HistogramSnapshot, Pool,
  PoolConfig, PoolError, Priority, SubmitOptions, WorkerState,
};
use inferpool_ort::{
  Device, EmbeddingModel, Fallbacks, ModelFiles, Pooling, SessionOptions, backend_factory,
  init_runtime,
};
use napi::bindgen_prelude::{Float32Array, Result};
use napi_derive::napi;

fn coded(code: &str, message: impl std::fmt::Display) -> napi::Error {
  napi::Error::from_reason(format!("{code}: {message}"))
}

fn backend_error(error: &BackendError) -> napi::Error {
  let code = match error.kind {
    BackendErrorKind::InvalidInput => "INVALID_INPUT",
    BackendErrorKind::Runtime => "ORT_LOAD_FAILED",
    BackendErrorKind::ModelNotFound => "MODEL_NOT_FOUND",
    BackendErrorKind::Model => "MODEL_INVALID",
    BackendErrorKind::Device => "DEVICE_UNAVAILABLE",
    BackendErrorKind::Run | BackendErrorKind::OutOfMemory => "INFERENCE_FAILED",
    BackendErrorKind::Panic => "INTERNAL",
  };
  coded(code, &error.message)
}

fn pool_error(error: &PoolError) -> napi::Error {
  match error {
    PoolError::InvalidInput(message) => coded("INVALID_INPUT", message),
    PoolError::Closed => coded("POOL_CLOSED", "the pool is closed"),
    PoolError::Overloaded { .. } => coded("OVERLOADED", error),
    PoolError::Timeout => coded("TIMEOUT", error),
    PoolError::Cancelled => coded("ABORTED", error),
    PoolError::Internal(message) => coded("INTERNAL", message),
    PoolError::Backend(error) => backend_error(error),
  }
}

/// A counter as a JavaScript number.
#[expect(clippy::cast_precision_loss, reason = "counters stay far below 2^53")]
fn number(n: impl TryInto<u64>) -> f64 {
  n.try_into().unwrap_or(u64::MAX) as f64
}

fn join_error(error: &tokio::task::JoinError) -> napi::Error {
  coded("INTERNAL", format!("a pool task failed: {error}"))
}

/// What was loaded by `initRuntime`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingRuntimeInfo {
  /// Absolute path of the ONNX Runtime library.
  pub path: String,
  /// Its version, e.g. `1.29.0`.
  pub version: String,
}

/// Loads ONNX Runtime from an absolute path (once per process).
#[napi]
pub fn init_runtime_library(path: String) -> Result<BindingRuntimeInfo> {
  let info = init_runtime(&PathBuf::from(path)).map_err(|e| backend_error(&e))?;
  Ok(BindingRuntimeInfo { path: info.path.to_string_lossy().into_owned(), version: info.version })
}

/// Options of `createPool`, already validated and resolved by the TypeScript layer.
#[napi(object)]
#[derive(Debug)]
pub struct BindingPoolOptions {
  /// A model folder or ONNX file.
  pub model_path: String,
  /// `cpu` or `cuda:N`, one entry per worker.
  pub devices: Vec<String>,
  /// ONNX Runtime intra-op threads per session.
  pub intra_op_threads: u32,
  /// Most items in one batch.
  pub max_batch_size: u32,
  /// Most padded tokens in one batch.
  pub max_batch_tokens: u32,
  /// `mean` or `cls`.
  pub pooling: String,
  /// Scale results to unit length.
  pub normalize: bool,
  /// Override of the model's maximum sequence length.
  pub max_length: Option<u32>,
  /// Most items accepted and not yet completed.
  pub max_queued_items: u32,
  /// How long an idle worker may hold a partial batch open, in milliseconds.
  pub max_wait_ms: u32,
  /// Whether a GPU worker whose session cannot be built runs on the CPU instead.
  pub cpu_fallback: bool,
}

/// A running pool.
#[napi]
#[derive(Debug)]
pub struct BindingPool {
  inner: Arc<Pool>,
  max_length: u32,
  cancellations: Arc<Cancellations>,
  /// Device of each worker, by worker index.
  devices: Vec<String>,
  /// Why a GPU worker runs on the CPU, by worker index.
  fallbacks: Fallbacks,
}

/// One worker in `status()`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingWorkerStatus {
  /// Worker index.
  pub id: u32,
  /// `cpu` or `cuda:N`, as asked.
  pub device: String,
  /// The execution provider it runs on: `cpu` or `cuda`.
  pub provider: String,
  /// Why it runs on the CPU although it was given a GPU.
  pub fallback: Option<String>,
  /// `idle`, `busy`, `backing-off` or `stopped`.
  pub state: String,
  /// Texts embedded.
  pub items: f64,
  /// Batches run (successful or not).
  pub batches: f64,
  /// Failed batches.
  pub errors: f64,
  /// Batches stolen from other workers.
  pub steals: f64,
  /// Current adaptive budget, padded tokens per batch.
  pub token_budget: f64,
  /// Time spent running batches, milliseconds.
  pub busy_ms: f64,
  /// Measured throughput (0 until the first batch).
  pub items_per_second: f64,
}

/// What `status()` returns.
#[napi(object)]
#[derive(Debug)]
pub struct BindingStatus {
  /// Texts accepted and not yet embedded (queued or running).
  pub outstanding: f64,
  /// Texts running now.
  pub in_flight: f64,
  /// Per worker.
  pub workers: Vec<BindingWorkerStatus>,
}

/// A histogram in `metrics()`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingHistogram {
  /// Upper bounds of the buckets, increasing.
  pub bounds: Vec<f64>,
  /// Observations at or below each bound (cumulative).
  pub counts: Vec<f64>,
  /// Observations.
  pub count: f64,
  /// Sum of the observations.
  pub sum: f64,
}

impl From<&HistogramSnapshot> for BindingHistogram {
  fn from(h: &HistogramSnapshot) -> Self {
    Self {
      bounds: h.buckets.iter().map(|b| b.0).collect(),
      counts: h.buckets.iter().map(|b| number(b.1)).collect(),
      count: number(h.count),
      sum: h.sum,
    }
  }
}

/// One worker's histograms in `metrics()`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingWorkerHistograms {
  /// Batch run time, seconds.
  pub inference: BindingHistogram,
  /// Texts per batch.
  pub batch_size: BindingHistogram,
}

/// What `metrics()` returns: the histograms (`status()` has the counters).
#[napi(object)]
#[derive(Debug)]
pub struct BindingMetrics {
  /// Per text: queued to the start of its batch, seconds.
  pub queue_wait: BindingHistogram,
  /// Per call: tokenizing, seconds.
  pub tokenize: BindingHistogram,
  /// Per call: submitted to answered, seconds.
  pub end_to_end: BindingHistogram,
  /// Per worker, by index.
  pub workers: Vec<BindingWorkerHistograms>,
}

/// Loads the model's tokenizer, starts one worker per device entry and waits until every
/// session is ready.
#[napi]
pub async fn create_pool(options: BindingPoolOptions) -> Result<BindingPool> {
  let pooling: Pooling = options.pooling.parse().map_err(|e| coded("INVALID_INPUT", e))?;
  let devices = options
    .devices
    .iter()
    .map(|d| d.parse::<Device>().map_err(|e| coded("INVALID_INPUT", e)))
    .collect::<Result<Vec<_>>>()?;
  if devices.is_empty() {
    return Err(coded("INVALID_INPUT", "at least one worker is needed"));
  }
  let labels: Vec<String> = devices.iter().map(ToString::to_string).collect();
  let fallbacks: Fallbacks = (0..devices.len()).map(|_| std::sync::OnceLock::new()).collect();
  let factory_fallbacks = options.cpu_fallback.then(|| Arc::clone(&fallbacks));
  let built =
    tokio::task::spawn_blocking(move || -> std::result::Result<(Pool, usize), BackendError> {
      let files = ModelFiles::resolve(&PathBuf::from(&options.model_path))?;
      let model = Arc::new(EmbeddingModel::load(files, options.max_length.map(|n| n as usize))?);
      let max_length = model.max_length;
      let session = SessionOptions {
        intra_threads: options.intra_op_threads as usize,
        pooling,
        normalize: options.normalize,
      };
      let config = PoolConfig {
        workers: devices.len(),
        policy: BatchPolicy {
          max_batch_size: options.max_batch_size.max(1) as usize,
          max_batch_tokens: options.max_batch_tokens.max(1) as usize,
          max_wait: Duration::from_millis(u64::from(options.max_wait_ms)),
          ..BatchPolicy::default()
        },
        max_queued_items: options.max_queued_items.max(1) as usize,
        ..PoolConfig::default()
      };
      let factory = backend_factory(model.files.onnx.clone(), devices, session, factory_fallbacks);
      Ok((Pool::new(&config, model, factory)?, max_length))
    })
    .await
    .map_err(|e| join_error(&e))?;
  let (pool, max_length) = built.map_err(|e| backend_error(&e))?;
  Ok(BindingPool {
    cancellations: Arc::default(),
    devices: labels,
    fallbacks,
    inner: Arc::new(pool),
    max_length: u32::try_from(max_length).unwrap_or(u32::MAX),
  })
}

#[napi]
impl BindingPool {
  /// Width of every embedding.
  #[napi(getter)]
  #[must_use]
  pub fn dimension(&self) -> u32 {
    u32::try_from(self.inner.dimension()).unwrap_or(u32::MAX)
  }

  /// Longest token sequence fed to the model; longer texts are truncated.
  #[napi(getter)]
  #[must_use]
  pub fn max_length(&self) -> u32 {
    self.max_length
  }

  /// Embeds `texts`; resolves with `texts.length × dimension` values, row `i` for text `i`.
  /// `requestId` (unique per pool) lets `cancel` reach this call; `priority` is `interactive`
  /// or `bulk`; texts not started within `timeoutMs` are not run.
  #[napi]
  pub async fn embed(
    &self,
    texts: Vec<String>,
    request_id: u32,
    priority: String,
    timeout_ms: Option<u32>,
  ) -> Result<Float32Array> {
    let priority = match priority.as_str() {
      "interactive" => Priority::Interactive,
      "bulk" => Priority::Bulk,
      other => return Err(coded("INVALID_INPUT", format!("unknown priority {other:?}"))),
    };
    let deadline =
      timeout_ms.map(|ms| std::time::Instant::now() + Duration::from_millis(u64::from(ms)));
    let options = SubmitOptions { priority, deadline };
    let (pool, cancellations) = (Arc::clone(&self.inner), Arc::clone(&self.cancellations));
    let id = u64::from(request_id);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Tokenization runs inside `submit`: keep it on a blocking thread, off the event loop and
    // off the runtime's async workers.
    let submitted = tokio::task::spawn_blocking(move || {
      let ticket = pool.submit(
        &texts,
        options,
        Box::new(move |result| {
          // The receiver is gone only when the caller's future was dropped; nothing to tell.
          let _ = tx.send(result);
        }),
      )?;
      cancellations.register(id, ticket);
      Ok::<_, PoolError>(())
    })
    .await
    .map_err(|e| join_error(&e))?;
    let values = match submitted {
      Ok(()) => rx.await.map_err(|_| coded("INTERNAL", "a request was dropped without an answer")),
      Err(error) => Err(pool_error(&error)),
    };
    self.cancellations.forget(id);
    values?.map(Float32Array::new).map_err(|e| pool_error(&e))
  }

  /// Counters and state of the pool and of every worker, read without locks.
  #[napi]
  #[must_use]
  pub fn status(&self) -> BindingStatus {
    let stats = self.inner.stats();
    BindingStatus {
      outstanding: number(stats.outstanding),
      in_flight: number(stats.in_flight),
      workers: stats
        .workers
        .iter()
        .enumerate()
        .map(|(id, w)| BindingWorkerStatus {
          id: u32::try_from(id).unwrap_or(u32::MAX),
          device: self.devices.get(id).cloned().unwrap_or_default(),
          provider: self.provider(id).to_owned(),
          fallback: self.fallbacks.get(id).and_then(|f| f.get()).cloned(),
          state: match w.state {
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::BackingOff => "backing-off",
            WorkerState::Stopped => "stopped",
          }
          .to_owned(),
          items: number(w.items),
          batches: number(w.batches),
          errors: number(w.errors),
          steals: number(w.steals),
          token_budget: number(w.token_budget),
          busy_ms: w.busy.as_secs_f64() * 1e3,
          items_per_second: w.items_per_second,
        })
        .collect(),
    }
  }

  fn provider(&self, id: usize) -> &'static str {
    let on_gpu = self.devices.get(id).is_some_and(|d| d.starts_with("cuda"));
    if on_gpu && self.fallbacks.get(id).is_none_or(|f| f.get().is_none()) { "cuda" } else { "cpu" }
  }

  /// The pool's histograms, read without locks.
  #[napi]
  #[must_use]
  pub fn metrics(&self) -> BindingMetrics {
    let stats = self.inner.stats();
    BindingMetrics {
      queue_wait: (&stats.queue_wait).into(),
      tokenize: (&stats.tokenize).into(),
      end_to_end: (&stats.end_to_end).into(),
      workers: stats
        .workers
        .iter()
        .map(|w| BindingWorkerHistograms {
          inference: (&w.inference).into(),
          batch_size: (&w.batch_size).into(),
        })
        .collect(),
    }
  }

  /// Cancels the call `requestId`, answering it with `TIMEOUT` when `timedOut`, else with
  /// `ABORTED`; its texts not yet started are not run.
  #[napi]
  #[must_use]
  pub fn cancel(&self, request_id: u32, timed_out: bool) -> bool {
    let error = if timed_out { PoolError::Timeout } else { PoolError::Cancelled };
    self.cancellations.cancel(u64::from(request_id), error)
  }

  /// Stops the pool: `drain` runs what is queued first, otherwise queued items fail with
  /// `POOL_CLOSED`. Resolves once every worker thread has exited.
  #[napi]
  pub async fn close(&self, drain: bool) -> Result<()> {
    let pool = Arc::clone(&self.inner);
    let mode = if drain { CloseMode::Drain } else { CloseMode::Cancel };
    tokio::task::spawn_blocking(move || pool.close(mode)).await.map_err(|e| join_error(&e))
  }
}
