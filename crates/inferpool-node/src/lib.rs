//! Node.js binding of inferpool: `#[napi]` types, conversion and error mapping only.
//!
//! Errors cross into JavaScript with their code as a prefix of the message (`CODE: message`);
//! the TypeScript layer turns them into `PoolError` with that `code`.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  path::PathBuf,
  sync::{Arc, Mutex},
  time::Duration,
};

use inferpool_core::{
  BackendError, BackendErrorKind, BatchPolicy, CallHandle, CloseMode, Event, HistogramSnapshot,
  ModelConfig, Models, Pool, PoolConfig, PoolError, Priority, Progress, SubmitOptions, Tokenize,
  UnloadReason, WorkerState,
};
use inferpool_ort::{
  Device, EmbeddingModel, Fallbacks, ModelFiles, Pooling, SessionOptions, SessionSpec,
  init_runtime, model_factory,
};
use napi::{
  Status,
  bindgen_prelude::{Float32Array, Result},
  threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
};
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
    PoolError::Unavailable(message) => coded("MODEL_UNAVAILABLE", message),
    PoolError::Internal(message) => coded("INTERNAL", message),
    PoolError::Backend(error) => backend_error(error),
  }
}

/// A counter as a JavaScript number.
#[expect(clippy::cast_precision_loss, reason = "counters stay far below 2^53")]
fn number(n: impl TryInto<u64>) -> f64 {
  n.try_into().unwrap_or(u64::MAX) as f64
}

/// Runs `f`, turning a panic into an `INTERNAL` error: a panic must never unwind into Node.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
  catch_unwind(AssertUnwindSafe(f)).map_err(|_| coded("INTERNAL", format!("{what} panicked")))
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
  let info = guarded("loading ONNX Runtime", || init_runtime(&PathBuf::from(path)))?
    .map_err(|e| backend_error(&e))?;
  Ok(BindingRuntimeInfo { path: info.path.to_string_lossy().into_owned(), version: info.version })
}

/// One model of `createPool`, already validated and resolved by the TypeScript layer.
#[napi(object)]
#[derive(Debug)]
pub struct BindingModelSpec {
  /// Its name.
  pub name: String,
  /// A model folder or ONNX file.
  pub path: String,
  /// `mean` or `cls`.
  pub pooling: String,
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

/// Something that happened to a model or a worker.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct BindingEvent {
  /// `model-loaded`, `model-unloaded`, `model-evicted`, `model-load-failed`, `worker-failed`
  /// or `worker-recovered`.
  pub kind: String,
  /// Worker index.
  pub worker: u32,
  /// Model index, for model events.
  pub model: Option<u32>,
  /// Why a model was unloaded: `idle` or `requested`.
  pub reason: Option<String>,
  /// For an eviction: the model loaded in its place.
  pub for_model: Option<u32>,
  /// For a failure: the error, as `CODE: message`.
  pub error: Option<String>,
  /// For a load: how long it took, milliseconds.
  pub took_ms: Option<f64>,
}

/// Where the binding sends events: does not keep the process alive.
type EventCallback = ThreadsafeFunction<BindingEvent, (), BindingEvent, Status, false, true>;

/// Where a call's progress goes (texts done): does not keep the process alive.
type ProgressCallback = ThreadsafeFunction<u32, (), u32, Status, false, true>;

fn index(n: usize) -> u32 {
  u32::try_from(n).unwrap_or(u32::MAX)
}

impl From<Event> for BindingEvent {
  fn from(event: Event) -> Self {
    let base = |kind: &str, worker: usize, model: Option<usize>| Self {
      kind: kind.to_owned(),
      worker: index(worker),
      model: model.map(index),
      reason: None,
      for_model: None,
      error: None,
      took_ms: None,
    };
    match event {
      Event::ModelLoaded { model, worker, took } => Self {
        took_ms: Some(took.as_secs_f64() * 1e3),
        ..base("model-loaded", worker, Some(model))
      },
      Event::ModelUnloaded { model, worker, reason: UnloadReason::Evicted { for_model } } => {
        Self { for_model: Some(index(for_model)), ..base("model-evicted", worker, Some(model)) }
      }
      Event::ModelUnloaded { model, worker, reason } => Self {
        reason: Some(if reason == UnloadReason::Idle { "idle" } else { "requested" }.to_owned()),
        ..base("model-unloaded", worker, Some(model))
      },
      Event::ModelLoadFailed { model, worker, error } => Self {
        error: Some(backend_error(&error).reason),
        ..base("model-load-failed", worker, Some(model))
      },
      Event::WorkerFailed { worker, error } => {
        Self { error: Some(backend_error(&error).reason), ..base("worker-failed", worker, None) }
      }
      Event::WorkerRecovered { worker } => base("worker-recovered", worker, None),
    }
  }
}

/// A running pool.
#[napi]
#[derive(Debug)]
pub struct BindingPool {
  inner: Arc<Pool>,
  /// Longest token sequence of each model.
  max_lengths: Vec<u32>,
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
  /// Why its device could not start (it does no work).
  pub failure: Option<String>,
  /// `idle`, `busy`, `loading`, `backing-off`, `failed` or `stopped`.
  pub state: String,
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
  /// Current adaptive budget, padded tokens per batch.
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

/// One model's histograms in `metrics()`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingModelHistograms {
  /// Per text: queued to the start of its batch, seconds.
  pub queue_wait: BindingHistogram,
  /// Per call: tokenizing, seconds.
  pub tokenize: BindingHistogram,
  /// Per call: submitted to answered, seconds.
  pub end_to_end: BindingHistogram,
  /// Per worker, by index: batch run time, seconds.
  pub inference: Vec<BindingHistogram>,
  /// Per worker, by index: texts per batch.
  pub batch_size: Vec<BindingHistogram>,
}

/// Loads every model's tokenizer, starts one worker per device entry, loads the preloaded
/// models and waits until they are ready. `onEvent` receives model and worker events.
#[napi]
pub async fn create_pool(
  options: BindingPoolOptions,
  on_event: Option<EventCallback>,
) -> Result<BindingPool> {
  let devices = options
    .devices
    .iter()
    .map(|d| d.parse::<Device>().map_err(|e| coded("INVALID_INPUT", e)))
    .collect::<Result<Vec<_>>>()?;
  if devices.is_empty() {
    return Err(coded("INVALID_INPUT", "at least one worker is needed"));
  }
  let poolings = options
    .models
    .iter()
    .map(|m| m.pooling.parse::<Pooling>().map_err(|e| coded("INVALID_INPUT", e)))
    .collect::<Result<Vec<_>>>()?;
  let labels: Vec<String> = devices.iter().map(ToString::to_string).collect();
  let fallbacks: Fallbacks = (0..devices.len()).map(|_| std::sync::OnceLock::new()).collect();
  let factory_fallbacks = options.cpu_fallback.then(|| Arc::clone(&fallbacks));
  let built =
    tokio::task::spawn_blocking(move || -> std::result::Result<(Pool, Vec<u32>), BackendError> {
      let mut configs = Vec::with_capacity(options.models.len());
      let mut sessions = Vec::with_capacity(options.models.len());
      let mut max_lengths = Vec::with_capacity(options.models.len());
      for (spec, pooling) in options.models.into_iter().zip(poolings) {
        let files = ModelFiles::resolve(&PathBuf::from(&spec.path))?;
        let model = EmbeddingModel::load(files, spec.max_length.map(|n| n as usize))?;
        max_lengths.push(index(model.max_length));
        sessions.push(SessionSpec {
          onnx: model.files.onnx.clone(),
          options: SessionOptions {
            intra_threads: options.intra_op_threads as usize,
            pooling,
            normalize: spec.normalize,
          },
        });
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "bytes")]
        let memory =
          spec.memory_bytes.map_or_else(|| model.files.weight_bytes(), |b| b.max(0.0) as u64);
        configs.push(ModelConfig {
          priority: spec.priority,
          workers: spec.workers.map(|w| w.into_iter().map(|i| i as usize).collect()),
          memory,
          ..ModelConfig::new(spec.name, Arc::new(model) as Arc<dyn Tokenize>)
        });
      }
      #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "bytes")]
      let budget = |b: f64| if b.is_finite() { b.max(0.0) as u64 } else { u64::MAX };
      #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "milliseconds")]
      let idle = options.idle_timeout_ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64));
      let config = PoolConfig {
        workers: devices.len(),
        policy: BatchPolicy {
          max_batch_size: options.max_batch_size.max(1) as usize,
          max_batch_tokens: options.max_batch_tokens.max(1) as usize,
          max_wait: Duration::from_millis(u64::from(options.max_wait_ms)),
          ..BatchPolicy::default()
        },
        max_queued_items: options.max_queued_items.max(1) as usize,
        memory_budget: options.memory_budgets.iter().copied().map(budget).collect(),
        idle_timeout: idle,
        max_switches_per_hour: options.max_switches_per_hour,
        switch_delay: Duration::from_millis(u64::from(options.switch_delay_ms)),
        tolerate_device_failures: options.tolerate_device_failures,
        wait_when_full: options.wait_when_full,
        ..PoolConfig::default()
      };
      let events = on_event.map(|callback| {
        Arc::new(move |event: Event| {
          let _ = callback.call(event.into(), ThreadsafeFunctionCallMode::NonBlocking);
        }) as inferpool_core::EventSink
      });
      let models = Models {
        models: configs,
        factory: model_factory(sessions, devices, factory_fallbacks),
        preload: options.preload.iter().map(|&m| m as usize).collect(),
        events,
      };
      Ok((Pool::with_models(&config, models)?, max_lengths))
    })
    .await
    .map_err(|e| join_error(&e))?;
  let (pool, max_lengths) = built.map_err(|e| backend_error(&e))?;
  Ok(BindingPool { devices: labels, fallbacks, inner: Arc::new(pool), max_lengths })
}

/// Queue class of a call.
#[napi(string_enum = "lowercase")]
#[derive(Clone, Copy, Debug)]
pub enum BindingPriority {
  /// Served first.
  Interactive,
  /// Served when no interactive work waits, and every few batches regardless.
  Bulk,
}

/// What a call is answered with.
type Outcome = std::result::Result<Vec<f32>, PoolError>;
/// Where a call's answer is sent.
type Answer = tokio::sync::oneshot::Sender<Outcome>;

/// One `embed` call: its answer, and the means to cancel it. Belongs to that call alone, so a
/// cancel can never reach another one, and nothing is kept once it is collected.
#[napi]
#[derive(Debug)]
pub struct BindingCall {
  handle: Arc<CallHandle>,
  answer: Mutex<Option<tokio::sync::oneshot::Receiver<Outcome>>>,
}

#[napi]
impl BindingCall {
  /// Resolves with the call's rows, or rejects with its error (once; a second call rejects).
  #[napi]
  pub async fn result(&self) -> Result<Float32Array> {
    let answer = self.answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let Some(answer) = answer else {
      return Err(coded("INTERNAL", "the result of a call was asked for twice"));
    };
    let rows =
      answer.await.map_err(|_| coded("INTERNAL", "a call was dropped without an answer"))?;
    rows.map(Float32Array::new).map_err(|e| pool_error(&e))
  }

  /// Answers the call with `TIMEOUT` when `timedOut`, else with `ABORTED`, unless it has been
  /// answered; its texts not started yet are not run. Returns whether this decided the outcome.
  #[napi]
  pub fn cancel(&self, timed_out: bool) -> bool {
    let error = if timed_out { PoolError::Timeout } else { PoolError::Cancelled };
    catch_unwind(AssertUnwindSafe(|| self.handle.cancel(error))).unwrap_or(false)
  }
}

#[napi]
impl BindingPool {
  /// Width of model `model`'s embeddings, once it has been loaded.
  #[napi]
  #[must_use]
  pub fn dimension(&self, model: u32) -> Option<u32> {
    self.inner.model_dimension(model as usize).map(index)
  }

  /// Longest token sequence fed to model `model`; longer texts are truncated.
  #[napi]
  #[must_use]
  pub fn max_length(&self, model: u32) -> u32 {
    self.max_lengths.get(model as usize).copied().unwrap_or(0)
  }

  /// Starts embedding `texts` with model `model` and returns the call at once: its `result()`
  /// resolves with `texts.length × dimension` values, row `i` for text `i`; its `cancel()`
  /// answers it at any time, while its texts are tokenized too. `priority` is `interactive` or
  /// `bulk`; texts not started within `timeoutMs` are not run. `onProgress` is told how many
  /// texts are done every `progressEvery` texts (not for the last one: `result()` says that).
  #[napi]
  pub fn embed(
    &self,
    model: u32,
    texts: Vec<String>,
    priority: BindingPriority,
    timeout_ms: Option<u32>,
    progress_every: Option<u32>,
    on_progress: Option<ProgressCallback>,
  ) -> Result<BindingCall> {
    let priority = match priority {
      BindingPriority::Interactive => Priority::Interactive,
      BindingPriority::Bulk => Priority::Bulk,
    };
    let deadline =
      timeout_ms.map(|ms| std::time::Instant::now() + Duration::from_millis(u64::from(ms)));
    let handle = Arc::new(CallHandle::new());
    let progress = on_progress.map(|callback| Progress {
      every: progress_every.unwrap_or(1).max(1) as usize,
      report: Arc::new(move |done| {
        let _ = callback.call(index(done), ThreadsafeFunctionCallMode::NonBlocking);
      }),
    });
    let options = SubmitOptions { priority, deadline, handle: Some(Arc::clone(&handle)), progress };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Whichever answers first, the pool's reply or the submit's own error, uses the sender.
    let sender = Arc::new(Mutex::new(Some(tx)));
    let answer = move |sender: &Mutex<Option<Answer>>, result| {
      let taken = sender.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
      // The receiver is gone only when the call object was collected; nothing to tell.
      if let Some(tx) = taken {
        let _ = tx.send(result);
      }
    };
    let pool = Arc::clone(&self.inner);
    // Tokenization runs inside `submit_to`: keep it on a blocking thread, off the event loop.
    napi::bindgen_prelude::spawn_blocking(move || {
      let reply_sender = Arc::clone(&sender);
      let reply = Box::new(move |result| answer(&reply_sender, result));
      let submitted =
        catch_unwind(AssertUnwindSafe(|| pool.submit_to(model as usize, &texts, options, reply)))
          .unwrap_or_else(|_| Err(PoolError::Internal("the submit panicked".to_owned())));
      if let Err(error) = submitted {
        answer(&sender, Err(error));
      }
    });
    Ok(BindingCall { handle, answer: Mutex::new(Some(rx)) })
  }

  /// Loads model `model` on `workers` (every worker it may use when absent); resolves when
  /// each has it.
  #[napi]
  pub async fn preload(&self, model: u32, workers: Option<Vec<u32>>) -> Result<()> {
    let pool = Arc::clone(&self.inner);
    tokio::task::spawn_blocking(move || {
      let workers: Option<Vec<usize>> =
        workers.map(|w| w.into_iter().map(|i| i as usize).collect());
      pool.preload(model as usize, workers.as_deref())
    })
    .await
    .map_err(|e| join_error(&e))?
    .map_err(|e| pool_error(&e))
  }

  /// Unloads model `model` from every worker; resolves with how many held it.
  #[napi]
  pub async fn unload(&self, model: u32) -> Result<u32> {
    let pool = Arc::clone(&self.inner);
    tokio::task::spawn_blocking(move || pool.unload(model as usize))
      .await
      .map_err(|e| join_error(&e))?
      .map(index)
      .map_err(|e| pool_error(&e))
  }

  /// Counters and state of the pool, of every worker and of every model, read without locks.
  #[napi]
  pub fn status(&self) -> Result<BindingStatus> {
    guarded("reading the status", || self.status_now())
  }

  fn status_now(&self) -> BindingStatus {
    let stats = self.inner.stats();
    let models = stats
      .models
      .iter()
      .enumerate()
      .map(|(m, model)| BindingModelStatus {
        name: model.name.clone(),
        dimension: model.dimension.map(index),
        max_length: self.max_lengths.get(m).copied().unwrap_or(0),
        loaded_on: model.loaded_on.iter().copied().map(index).collect(),
        outstanding: number(model.outstanding),
        in_flight: number(model.in_flight),
        items: number(model.items),
        loads: number(model.loads),
        unloads: number(model.unloads),
        evictions: number(model.evictions),
        memory_bytes: number(model.memory),
        priority: model.priority,
      })
      .collect();
    BindingStatus {
      outstanding: number(stats.outstanding),
      in_flight: number(stats.in_flight),
      waiting: number(stats.waiting),
      workers: stats
        .workers
        .iter()
        .enumerate()
        .map(|(id, w)| BindingWorkerStatus {
          id: index(id),
          device: self.devices.get(id).cloned().unwrap_or_default(),
          provider: self.provider(id).to_owned(),
          fallback: self.fallbacks.get(id).and_then(|f| f.get()).cloned(),
          failure: w.failure.clone(),
          state: match w.state {
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Loading => "loading",
            WorkerState::BackingOff => "backing-off",
            WorkerState::Failed => "failed",
            WorkerState::Stopped => "stopped",
          }
          .to_owned(),
          loaded_models: (0..w.models.len()).filter(|&m| w.models[m].loaded).map(index).collect(),
          items: number(w.items),
          batches: number(w.batches),
          errors: number(w.errors),
          steals: number(w.steals),
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
        })
        .collect(),
      models,
    }
  }

  fn provider(&self, id: usize) -> &'static str {
    let on_gpu = self.devices.get(id).is_some_and(|d| d.starts_with("cuda"));
    if on_gpu && self.fallbacks.get(id).is_none_or(|f| f.get().is_none()) { "cuda" } else { "cpu" }
  }

  /// The pool's histograms per model (and per worker within each), read without locks.
  #[napi]
  pub fn metrics(&self) -> Result<Vec<BindingModelHistograms>> {
    guarded("reading the metrics", || self.metrics_now())
  }

  fn metrics_now(&self) -> Vec<BindingModelHistograms> {
    let stats = self.inner.stats();
    stats
      .models
      .iter()
      .enumerate()
      .map(|(m, model)| BindingModelHistograms {
        queue_wait: (&model.queue_wait).into(),
        tokenize: (&model.tokenize).into(),
        end_to_end: (&model.end_to_end).into(),
        inference: stats.workers.iter().map(|w| (&w.models[m].inference).into()).collect(),
        batch_size: stats.workers.iter().map(|w| (&w.models[m].batch_size).into()).collect(),
      })
      .collect()
  }

  /// Stops admission now, on the calling thread, and tells the workers to drain or (unless
  /// `drain`) cancel: what is queued fails with `POOL_CLOSED` at once, and so do calls made
  /// before whose texts have not reached the pool yet. `close` then waits for the threads.
  #[napi]
  pub fn begin_close(&self, drain: bool) -> Result<()> {
    let mode = if drain { CloseMode::Drain } else { CloseMode::Cancel };
    guarded("closing the pool", || self.inner.begin_close(mode))
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
