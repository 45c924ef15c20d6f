//! The scheduler: per model, injectors (interactive, and bulk by length class); per worker and
//! model, a work-stealing deque; one OS thread per worker; the request lifecycle; loading and
//! unloading models.
//!
//! How an item travels:
//! 1. `submit` tokenizes with its model's tokenizer on the caller's thread, checks admission
//!    (`max_queued_items`, over every model), pushes every item into its model's injector
//!    ([`Queues`]: interactive items in arrival order, bulk items by length class) and wakes
//!    workers ([`Sleep`]).
//! 2. A worker whose device is free picks a model ([`WorkerThread::choose_model`]): among the
//!    models it has loaded and that have queued work, the highest priority, then one with
//!    interactive work, then the one unserved the longest. It loads another model (evicting what
//!    no longer fits its memory budget, [`crate::model`]) only when that is justified: it has
//!    nothing else to do and the model is loaded nowhere or has more work than its holders take
//!    in a batch; or the model outranks what it runs; or, at equal priority, the model has been
//!    unserved for `switch_delay` while loaded nowhere. Loads that evict are capped by
//!    `max_switches_per_hour`.
//! 3. It works out its *share* of that model's queued tokens ([`fair_share`]): enough to finish
//!    together with every other worker holding the model, given their measured speeds and the
//!    batches they are running. Its token budget for the batch is the smaller of that share and
//!    its adaptive budget for the model.
//! 4. It looks for work in this order ([`WorkerThread::find_batch`]): interactive items (unless
//!    the fairness tick says bulk goes first this time), then its own deque for the model, topped
//!    up from the bulk length classes (a sweep downwards from its cursor) to the budget, then a
//!    batch stolen from a random other worker's deque for the model.
//! 5. It cuts a batch from what it holds ([`select`]): length-sorted, the most urgent item
//!    included, capped by `max_batch_size`, the budget and the padding bound. The rest goes back
//!    to its deque in length order, where idle workers can steal it.
//! 6. The batch runs outside every lock, under `catch_unwind`. Rows go to their requests by
//!    index. On failure: out-of-memory halves the budget and requeues the items; invalid input
//!    fails their requests; any other error (or a panic) requeues the items for another worker
//!    up to `max_attempts`, and the worker backs off exponentially until it succeeds again.
//! 7. Items of answered requests (failed, cancelled) and items past their deadline are dropped
//!    when a worker meets them; they never run. A worker that unloads a model first moves its
//!    deque for that model back to the injectors, so no item is lost or run twice.
//! 8. `close` stops admission; in drain mode workers run until no item is outstanding (the switch
//!    cap no longer applies), in cancel mode every queued item fails with `Closed`. It returns
//!    once every thread has exited.

use std::{
  collections::VecDeque,
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{
    Arc, Condvar, Mutex, OnceLock,
    atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    mpsc,
  },
  thread::{JoinHandle, Thread},
  time::{Duration, Instant},
};

use crossbeam_deque::{Steal, Stealer, Worker};

use crate::{
  AdaptiveConfig, Backend, BackendError, BackendErrorKind, BackendFactory, BatchPolicy, PoolError,
  Tokenize,
  adaptive::Controller,
  admission::{Admission, Waiting},
  batch::{Outstanding, Queued, select},
  metrics::{HistogramSnapshot, PoolHistograms, WorkerHistograms},
  model::{Event, EventSink, ModelConfig, ModelFactory, Models, UnloadReason, Usage},
  queue::{CLASSES, Queues},
  request::{Reply, Request, SubmitOptions},
  share::{Peer, fair_share},
  sleep::{Round, Sleep, Wake, run_worker},
};

/// Bulk goes first on every `FAIRNESS_INTERVAL`-th batch, even when interactive work waits, so
/// bulk is never starved (tokio's `global_queue_interval` idea).
const FAIRNESS_INTERVAL: u64 = 4;

/// A worker whose speed is not yet measured runs batches this many times smaller.
const FIRST_BATCH_DIVISOR: usize = 4;

/// Texts tokenized at a time by `submit`; a cancel or a deadline is noticed between chunks.
const TOKENIZE_CHUNK: usize = 256;

/// How many random victims a worker tries per steal round before it concludes there is nothing.
const STEAL_ROUNDS: usize = 2;

/// Most models, and most workers, in one pool (both are bit sets).
pub const MAX_MODELS: usize = 64;

/// How long a worker that had no room for a model waits before it considers it again.
const REFUSED_PAUSE: Duration = Duration::from_millis(100);

/// The window of `max_switches_per_hour`.
const HOUR: Duration = Duration::from_secs(3600);

/// How the pool runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
  /// Number of worker threads; each loads its own backends.
  pub workers: usize,
  /// Limits for every batch.
  pub policy: BatchPolicy,
  /// Most items accepted and not yet completed; a request beyond it fails at once with
  /// [`PoolError::Overloaded`].
  pub max_queued_items: usize,
  /// Runs an item may fail before its request gets the error.
  pub max_attempts: u32,
  /// The adaptive token budget.
  pub adaptive: AdaptiveConfig,
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
  /// A worker whose device fails while it preloads ([`BackendErrorKind::Device`]) is marked
  /// [`WorkerState::Failed`] and the pool starts without it (instead of failing to start), as
  /// long as every model keeps a worker.
  pub tolerate_device_failures: bool,
  /// A request that would exceed `max_queued_items` waits, in submission order, until earlier
  /// work completes and it fits ([`crate::admission`]), instead of failing with
  /// [`PoolError::Overloaded`]. A request larger than `max_queued_items` alone fails either way.
  pub wait_when_full: bool,
}

impl Default for PoolConfig {
  fn default() -> Self {
    Self {
      workers: 1,
      policy: BatchPolicy::default(),
      max_queued_items: 1 << 20,
      max_attempts: 3,
      adaptive: AdaptiveConfig::default(),
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
  fn budget(&self, worker: usize) -> u64 {
    self.memory_budget.get(worker).copied().unwrap_or(u64::MAX)
  }

  /// The pause after `failures` consecutive failures (at least 1): `backoff_initial ×
  /// 2^(failures-1)`, at most `backoff_max`.
  fn backoff(&self, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    self.backoff_initial.saturating_mul(1 << exponent).min(self.backoff_max)
  }
}

/// What `close` does with items still queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
  /// Run everything already accepted, then stop.
  Drain,
  /// Fail every queued item with [`PoolError::Closed`]; batches already running finish.
  Cancel,
}

const OPEN: u8 = 0;
const DRAIN: u8 = 1;
const CANCEL: u8 = 2;

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
  fn from_u8(v: u8) -> Self {
    match v {
      0 => Self::Idle,
      1 => Self::Busy,
      2 => Self::Loading,
      3 => Self::BackingOff,
      4 => Self::Failed,
      _ => Self::Stopped,
    }
  }

  fn serves(self) -> bool {
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
  /// Current adaptive token budget (of the model it ran last).
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

/// Shared, lock-free view of one model on one worker.
#[derive(Debug, Default)]
struct WorkerModelShared {
  items: AtomicU64,
  batches: AtomicU64,
  /// Padded tokens per second, as `f64` bits (0 = not measured yet): the fitted marginal
  /// speed once the cost model has one, a moving average before.
  token_speed: AtomicU64,
  histograms: WorkerHistograms,
}

/// Shared, lock-free view of one worker.
#[derive(Debug, Default)]
struct WorkerShared {
  state: AtomicU8,
  items: AtomicU64,
  batches: AtomicU64,
  errors: AtomicU64,
  steals: AtomicU64,
  token_budget: AtomicUsize,
  busy_nanos: AtomicU64,
  /// Items per second, as `f64` bits (0 = not measured yet).
  speed: AtomicU64,
  /// When the batch running now started, nanoseconds after the pool's epoch.
  batch_started: AtomicU64,
  /// How long the worker expects that batch to take, nanoseconds (0 = no batch running, or no
  /// estimate yet).
  batch_expected: AtomicU64,
  /// The models it holds, one bit per model index.
  loaded: AtomicU64,
  loads: AtomicU64,
  switches: AtomicU64,
  evictions: AtomicU64,
  memory_used: AtomicU64,
  /// Why its device could not start.
  failure: OnceLock<String>,
  models: Box<[WorkerModelShared]>,
}

impl WorkerShared {
  fn new(models: usize) -> Self {
    Self { models: (0..models).map(|_| WorkerModelShared::default()).collect(), ..Self::default() }
  }

  fn holds(&self, model: usize) -> bool {
    self.loaded.load(Ordering::Relaxed) & (1 << model) != 0
  }

  fn state(&self) -> WorkerState {
    WorkerState::from_u8(self.state.load(Ordering::Relaxed))
  }
}

/// Shared state of one model.
struct ModelShared {
  config: ModelConfig,
  /// Where its admitted items wait.
  queues: Queues,
  /// Its items (and tokens) accepted and not yet completed; they count into the pool's.
  outstanding: Arc<Outstanding>,
  /// Its items running now.
  in_flight: AtomicUsize,
  /// Their tokens.
  in_flight_tokens: AtomicUsize,
  /// Width of its rows, set by the first load.
  dimension: OnceLock<usize>,
  histograms: PoolHistograms,
  items: AtomicU64,
  /// When a batch of it last started, or its queue last filled from empty (nanoseconds after
  /// the epoch): how long its work has gone unserved.
  served_at: AtomicU64,
  /// Workers loading it now.
  loading: AtomicUsize,
  loads: AtomicU64,
  unloads: AtomicU64,
  evictions: AtomicU64,
}

impl ModelShared {
  fn queued_items(&self) -> usize {
    self
      .outstanding
      .items
      .load(Ordering::Relaxed)
      .saturating_sub(self.in_flight.load(Ordering::Relaxed))
  }
}

/// A request to one worker, handled between batches.
enum Command {
  Load { model: usize, done: mpsc::Sender<Result<(), PoolError>> },
  Unload { model: usize, done: mpsc::Sender<bool> },
}

/// A cancellation handle for one submitted request.
#[derive(Clone, Debug)]
pub struct Ticket {
  request: Arc<Request>,
}

impl Ticket {
  /// Fails the request with `error` unless it is already answered; its items not yet started
  /// are skipped. Returns whether this call answered it.
  #[expect(clippy::must_use_candidate, reason = "cancelling is the point; the flag is optional")]
  pub fn cancel_with(&self, error: PoolError) -> bool {
    if self.request.is_finished() {
      return false;
    }
    self.request.fail(error);
    true
  }

  /// [`Ticket::cancel_with`] [`PoolError::Cancelled`].
  #[expect(clippy::must_use_candidate, reason = "cancelling is the point; the flag is optional")]
  pub fn cancel(&self) -> bool {
    self.cancel_with(PoolError::Cancelled)
  }

  /// Whether the request has been answered.
  #[must_use]
  pub fn is_finished(&self) -> bool {
    self.request.is_finished()
  }
}

/// What the workers and the pool handle share (rayon's `Registry`).
struct Registry {
  /// Per model.
  models: Vec<ModelShared>,
  /// Time zero of the workers' timestamps.
  epoch: Instant,
  /// Steal ends of every worker's deques, `[worker][model]`.
  stealers: Vec<Vec<Stealer<Queued>>>,
  /// Park/wake protocol.
  sleep: Sleep,
  /// `OPEN`, `DRAIN` or `CANCEL`.
  closing: AtomicU8,
  /// Items (and tokens) accepted and not yet completed, over every model (decremented by
  /// `Queued::drop`).
  outstanding: Arc<Outstanding>,
  /// Admission order.
  next_seq: AtomicU64,
  /// Requests waiting for room (`wait_when_full`).
  admission: Admission,
  /// Per-worker counters.
  workers: Vec<WorkerShared>,
  /// Per-worker commands; `None` once the worker has exited.
  commands: Vec<Mutex<Option<Vec<Command>>>>,
  /// Worker threads, to unpark them from a back-off when the pool closes.
  threads: Mutex<Vec<Thread>>,
  /// Worker threads that have exited (every `close` waits for all of them).
  exited: Mutex<usize>,
  /// Signalled when `exited` grows.
  exited_changed: Condvar,
  factory: ModelFactory,
  events: Option<EventSink>,
  config: PoolConfig,
}

impl Registry {
  fn closing(&self) -> u8 {
    // SeqCst with the `outstanding` reservation in `submit`: see the comment there.
    self.closing.load(Ordering::SeqCst)
  }

  fn push(&self, item: Queued) {
    self.models[item.request.model].queues.push(item);
  }

  fn nanos_since_epoch(&self) -> u64 {
    u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
  }

  /// Queues the tokenized items of `request` (their places already reserved in the pool's
  /// outstanding count) and wakes workers.
  fn enqueue(&self, model: usize, request: &Arc<Request>, encoded: Vec<crate::TokenizedText>) {
    let shared = &self.models[model];
    let count = encoded.len();
    if shared.queued_items() == 0 {
      shared.served_at.store(self.nanos_since_epoch(), Ordering::Relaxed);
    }
    shared.outstanding.items.fetch_add(count, Ordering::SeqCst);
    let tokens: usize = encoded.iter().map(|t| t.len().max(1)).sum();
    shared.outstanding.tokens.fetch_add(tokens, Ordering::Relaxed);
    self.outstanding.tokens.fetch_add(tokens, Ordering::Relaxed);
    let now = Instant::now();
    let first = self.next_seq.fetch_add(count as u64, Ordering::Relaxed);
    for (index, input) in encoded.into_iter().enumerate() {
      self.push(Queued {
        request: Arc::clone(request),
        index,
        input,
        seq: first + index as u64,
        admitted_at: now,
        attempts: 0,
        outstanding: Arc::clone(&shared.outstanding),
      });
    }
    self.sleep.notify(if count > 1 {
      Wake::All
    } else {
      Wake::One { prefer: self.holder_mask(model) }
    });
    // A close that raced with this may have missed these items: settle them here.
    if self.closing() == CANCEL {
      drain_injectors(self);
    }
  }

  /// Admits the waiting requests that fit now, in order (a cancelling close fails them).
  fn admit_waiting(&self) {
    if self.admission.items.load(Ordering::SeqCst) == 0 {
      return;
    }
    let refuse = (self.closing() == CANCEL).then_some(PoolError::Closed);
    let admitted =
      self.admission.admit(&self.outstanding.items, self.config.max_queued_items, refuse.as_ref());
    for (request, error) in admitted.failed {
      request.fail(error);
    }
    for Waiting { request, model, items } in admitted.calls {
      self.enqueue(model, &request, items);
    }
  }

  /// Workers holding `model` now.
  fn holders(&self, model: usize) -> usize {
    self.workers.iter().filter(|w| w.holds(model)).count()
  }

  /// The workers holding `model` now, one bit each (whom a single wake prefers).
  fn holder_mask(&self, model: usize) -> u64 {
    self.workers.iter().enumerate().filter(|(_, w)| w.holds(model)).fold(0, |m, (i, _)| m | 1 << i)
  }

  /// Why no worker can ever run `model`, if none can: every worker it may use failed, or has
  /// too little memory budget for it.
  fn unplaceable(&self, model: usize) -> Option<String> {
    let shared = &self.models[model];
    let usable = |w: usize| {
      shared.config.allows(w)
        && self.workers[w].failure.get().is_none()
        && shared.config.memory <= self.config.budget(w)
    };
    if (0..self.workers.len()).any(usable) {
      return None;
    }
    Some(format!(
      "model {:?} can run on no worker: the workers it may use failed or have less memory budget than its {} bytes",
      shared.config.name, shared.config.memory
    ))
  }

  fn emit(&self, event: Event) {
    if let Some(sink) = &self.events {
      sink(event);
    }
  }
}

/// A pool of worker threads that batch items across requests, for one or more models.
pub struct Pool {
  registry: Arc<Registry>,
  handles: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Pool").field("stats", &self.stats()).finish_non_exhaustive()
  }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  mutex.lock().expect("a pool lock was poisoned. This is a bug.")
}

impl Pool {
  /// A pool of one model (named `model`), loaded on every worker before this returns: worker
  /// `i` builds its backend with `factory(i)`. If any backend fails to build, every thread is
  /// stopped and the first error returned.
  pub fn new(
    config: &PoolConfig,
    tokenizer: Arc<dyn Tokenize>,
    factory: BackendFactory,
  ) -> Result<Self, BackendError> {
    Self::with_models(
      config,
      Models {
        models: vec![ModelConfig::new("model", tokenizer)],
        factory: Box::new(move |worker, _| factory(worker)),
        preload: vec![0],
        events: None,
      },
    )
  }

  /// Starts `config.workers` threads serving `models`, loads the preloaded models and waits
  /// until they are ready. If a preload fails, every thread is stopped and the first error
  /// returned.
  pub fn with_models(config: &PoolConfig, models: Models) -> Result<Self, BackendError> {
    validate(config, &models)?;
    let model_count = models.models.len();
    let deques: Vec<Vec<Worker<Queued>>> =
      (0..config.workers).map(|_| (0..model_count).map(|_| Worker::new_fifo()).collect()).collect();
    let outstanding = Arc::new(Outstanding::default());
    let registry = Arc::new(Registry {
      models: models
        .models
        .into_iter()
        .map(|config| ModelShared {
          config,
          queues: Queues::default(),
          outstanding: Arc::new(Outstanding {
            total: Some(Arc::clone(&outstanding)),
            ..Outstanding::default()
          }),
          in_flight: AtomicUsize::new(0),
          in_flight_tokens: AtomicUsize::new(0),
          dimension: OnceLock::new(),
          histograms: PoolHistograms::default(),
          items: AtomicU64::new(0),
          served_at: AtomicU64::new(0),
          loading: AtomicUsize::new(0),
          loads: AtomicU64::new(0),
          unloads: AtomicU64::new(0),
          evictions: AtomicU64::new(0),
        })
        .collect(),
      epoch: Instant::now(),
      stealers: deques.iter().map(|d| d.iter().map(Worker::stealer).collect()).collect(),
      sleep: Sleep::new(config.workers),
      closing: AtomicU8::new(OPEN),
      outstanding,
      next_seq: AtomicU64::new(0),
      admission: Admission::default(),
      workers: (0..config.workers).map(|_| WorkerShared::new(model_count)).collect(),
      commands: (0..config.workers).map(|_| Mutex::new(Some(Vec::new()))).collect(),
      threads: Mutex::new(Vec::new()),
      exited: Mutex::new(0),
      exited_changed: Condvar::new(),
      factory: models.factory,
      events: models.events,
      config: config.clone(),
    });
    let preload = Arc::new(models.preload);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), BackendError>>();
    let mut handles = Vec::with_capacity(config.workers);
    for (index, own) in deques.into_iter().enumerate() {
      let worker_registry = Arc::clone(&registry);
      let (ready, preload) = (ready_tx.clone(), Arc::clone(&preload));
      let spawned =
        std::thread::Builder::new().name(format!("inferpool-worker-{index}")).spawn(move || {
          // Runs however the thread ends, a panic included.
          let _exit = ExitGuard { registry: Arc::clone(&worker_registry), index };
          start_worker(WorkerThread::new(index, worker_registry, own), &preload, &ready);
        });
      match spawned {
        Ok(handle) => {
          lock(&registry.threads).push(handle.thread().clone());
          handles.push(handle);
        }
        Err(error) => {
          let _ = ready_tx.send(Err(BackendError::new(
            BackendErrorKind::Device,
            format!("cannot start a worker thread: {error}"),
          )));
          break;
        }
      }
    }
    drop(ready_tx);
    let mut failure = ready_rx.iter().take(config.workers).find_map(Result::err);
    if failure.is_none() {
      failure = orphaned_model(&registry);
    }
    let pool = Self { registry, handles: Mutex::new(handles) };
    if let Some(error) = failure {
      pool.close(CloseMode::Cancel);
      return Err(error);
    }
    Ok(pool)
  }

  /// Width of the first model's rows (0 until it has been loaded).
  #[must_use]
  pub fn dimension(&self) -> usize {
    self.model_dimension(0).unwrap_or(0)
  }

  /// Width of model `model`'s rows, once it has been loaded somewhere.
  #[must_use]
  pub fn model_dimension(&self, model: usize) -> Option<usize> {
    self.registry.models.get(model).and_then(|m| m.dimension.get().copied())
  }

  /// Number of models.
  #[must_use]
  pub fn model_count(&self) -> usize {
    self.registry.models.len()
  }

  /// [`Pool::submit_to`] the first model.
  pub fn submit(
    &self,
    texts: &[String],
    options: SubmitOptions,
    reply: Reply,
  ) -> Result<Ticket, PoolError> {
    self.submit_to(0, texts, options, reply)
  }

  /// Tokenizes `texts` with model `model`'s tokenizer on the calling thread and queues them as
  /// one request. `reply` is called exactly once, from a worker thread (or this one), with
  /// `texts.len() × dimension` values in input order, or with the first error. When `submit_to`
  /// itself returns an error, `reply` is never called.
  pub fn submit_to(
    &self,
    model: usize,
    texts: &[String],
    options: SubmitOptions,
    reply: Reply,
  ) -> Result<Ticket, PoolError> {
    let registry = &self.registry;
    let Some(shared) = registry.models.get(model) else {
      return Err(PoolError::InvalidInput(format!("no model {model}")));
    };
    let submitted = Instant::now();
    let registry_for_reply = Arc::clone(registry);
    let reply: Reply = Box::new(move |result| {
      registry_for_reply.models[model].histograms.end_to_end.record_duration(submitted.elapsed());
      reply(result);
      // Its items have left: a waiting request may fit now.
      registry_for_reply.admit_waiting();
    });
    let SubmitOptions { priority, deadline, handle, progress } = options;
    let request = Arc::new(Request::new(texts.len(), model, priority, deadline, progress, reply));
    if let Some(Err(error)) = handle.map(|h| h.attach(&request)) {
      // Cancelled before it was submitted: the error is the answer, given here.
      request.forget_reply();
      return Err(error);
    }
    let ticket = Ticket { request: Arc::clone(&request) };
    let count = texts.len();
    let limit = registry.config.max_queued_items;
    let wait = registry.config.wait_when_full && count <= limit;
    // Reserve the places (or, when the request may wait, count it as waiting) before looking
    // at `closing` (both SeqCst): a drain that starts after this check then sees it and keeps
    // its workers until these items are done.
    let reserved = if wait { &registry.admission.items } else { &registry.outstanding.items };
    let before = reserved.fetch_add(count, Ordering::SeqCst);
    let release = |registry: &Registry| {
      reserved.fetch_sub(count, Ordering::SeqCst);
      request.forget_reply();
      // A draining worker may be waiting for the count to reach zero, and waiting requests
      // for room.
      registry.sleep.notify(Wake::All);
      registry.admit_waiting();
    };
    if registry.closing() != OPEN {
      release(registry);
      return Err(PoolError::Closed);
    }
    if texts.is_empty() {
      request.complete_empty();
      return Ok(ticket);
    }
    if let Some(reason) = registry.unplaceable(model) {
      release(registry);
      return Err(PoolError::Unavailable(reason));
    }
    if !wait && before + count > limit {
      release(registry);
      let queued = registry.outstanding.items.load(Ordering::Relaxed);
      return Err(PoolError::Overloaded { queued, requested: count, limit });
    }
    let tokenizing = Instant::now();
    let encoded = match tokenize(&shared.config, &request, texts) {
      Ok(Some(encoded)) => encoded,
      Ok(None) => {
        // Answered (cancelled or past its deadline) while it was tokenized.
        release(registry);
        return Ok(ticket);
      }
      Err(error) => {
        release(registry);
        return Err(error);
      }
    };
    shared.histograms.tokenize.record_duration(tokenizing.elapsed());
    if wait {
      registry.admission.enqueue(Waiting { request, model, items: encoded });
      registry.admit_waiting();
    } else {
      registry.enqueue(model, &request, encoded);
    }
    Ok(ticket)
  }

  /// Loads model `model` on `workers` (every worker it may use when `None`) and waits until
  /// each has it. A worker loads between batches; loading may evict other models there.
  ///
  /// # Errors
  /// [`PoolError::InvalidInput`] for an unknown model or a worker it may not use,
  /// [`PoolError::Unavailable`] when a worker has no room (its budget, priorities or switch
  /// cap), [`PoolError::Backend`] when loading fails, [`PoolError::Closed`].
  pub fn preload(&self, model: usize, workers: Option<&[usize]>) -> Result<(), PoolError> {
    let registry = &self.registry;
    let Some(shared) = registry.models.get(model) else {
      return Err(PoolError::InvalidInput(format!("no model {model}")));
    };
    if let Some(reason) = registry.unplaceable(model) {
      return Err(PoolError::Unavailable(reason));
    }
    let failure = |w: usize| registry.workers[w].failure.get();
    let all: Vec<usize> = (0..registry.workers.len())
      .filter(|&w| shared.config.allows(w) && failure(w).is_none())
      .collect();
    let targets = workers.map_or(all, <[usize]>::to_vec);
    if let Some(&bad) =
      targets.iter().find(|&&w| w >= registry.workers.len() || !shared.config.allows(w))
    {
      return Err(PoolError::InvalidInput(format!(
        "model {:?} may not load on worker {bad}",
        shared.config.name
      )));
    }
    if let Some((bad, why)) = targets.iter().find_map(|&w| failure(w).map(|f| (w, f))) {
      return Err(PoolError::Backend(BackendError::new(
        BackendErrorKind::Device,
        format!("worker {bad} is not running: its device failed at start: {why}"),
      )));
    }
    let mut answers = Vec::with_capacity(targets.len());
    for worker in targets {
      let (done, answer) = mpsc::channel();
      self.command(worker, Command::Load { model, done })?;
      answers.push(answer);
    }
    registry.sleep.notify(Wake::All);
    for answer in answers {
      answer.recv().unwrap_or(Err(PoolError::Closed))?;
    }
    Ok(())
  }

  /// Unloads model `model` from every worker, each between batches. Its queued items stay
  /// queued (a worker loads it again for them). Returns on how many workers it was loaded.
  ///
  /// # Errors
  /// [`PoolError::InvalidInput`] for an unknown model, [`PoolError::Closed`].
  pub fn unload(&self, model: usize) -> Result<usize, PoolError> {
    let registry = &self.registry;
    if model >= registry.models.len() {
      return Err(PoolError::InvalidInput(format!("no model {model}")));
    }
    let mut answers = Vec::new();
    for worker in 0..registry.workers.len() {
      if registry.workers[worker].failure.get().is_some() {
        // Its device failed at start: it never held anything.
        continue;
      }
      let (done, answer) = mpsc::channel();
      self.command(worker, Command::Unload { model, done })?;
      answers.push(answer);
    }
    registry.sleep.notify(Wake::All);
    Ok(answers.into_iter().filter(|a| a.recv().unwrap_or(false)).count())
  }

  fn command(&self, worker: usize, command: Command) -> Result<(), PoolError> {
    if self.registry.closing() != OPEN {
      return Err(PoolError::Closed);
    }
    let mut commands = lock(&self.registry.commands[worker]);
    commands.as_mut().ok_or(PoolError::Closed)?.push(command);
    Ok(())
  }

  /// Counters and queue depth now.
  #[must_use]
  pub fn stats(&self) -> PoolStats {
    let r = &self.registry;
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
        token_budget: w.token_budget.load(Ordering::Relaxed),
        busy: Duration::from_nanos(w.busy_nanos.load(Ordering::Relaxed)),
        items_per_second: f64::from_bits(w.speed.load(Ordering::Relaxed)),
        loads: w.loads.load(Ordering::Relaxed),
        switches: w.switches.load(Ordering::Relaxed),
        evictions: w.evictions.load(Ordering::Relaxed),
        memory_used: w.memory_used.load(Ordering::Relaxed),
        memory_budget: r.config.budget(index),
        failure: w.failure.get().cloned(),
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

  /// Stops admission, drains or cancels what is queued, and joins every worker thread. Calling
  /// it again is harmless, also while another call waits; a cancel after a drain turns the
  /// drain into a cancel, and both calls return once the threads have exited.
  pub fn close(&self, mode: CloseMode) {
    self.begin_close(mode);
    let handles = std::mem::take(&mut *lock(&self.handles));
    for handle in handles {
      // Workers run backends under `catch_unwind`; a join error would repeat a panic that was
      // already reported to the callers of that batch.
      let _ = handle.join();
    }
    // Another `close` may be joining the threads: wait until each has stopped.
    let registry = &self.registry;
    let started = lock(&registry.threads).len();
    let mut exited = lock(&registry.exited);
    while *exited < started {
      exited =
        registry.exited_changed.wait(exited).expect("a pool lock was poisoned. This is a bug.");
    }
  }

  /// Stops admission and tells every worker to drain or cancel, without waiting (a cancel
  /// answers what is queued at once); [`Pool::close`] then waits for the threads.
  pub fn begin_close(&self, mode: CloseMode) {
    let registry = &self.registry;
    let target = if mode == CloseMode::Cancel { CANCEL } else { DRAIN };
    registry.closing.fetch_max(target, Ordering::SeqCst);
    if target == CANCEL {
      drain_injectors(registry);
    }
    registry.admit_waiting();
    registry.sleep.notify(Wake::All);
    for thread in lock(&registry.threads).iter() {
      thread.unpark();
    }
  }
}

impl Drop for Pool {
  /// Cancels what is queued and lets the workers exit on their own: dropping a pool never
  /// waits for a thread (it may happen on an event loop, during garbage collection). Only
  /// [`Pool::close`] waits.
  fn drop(&mut self) {
    self.begin_close(CloseMode::Cancel);
  }
}

/// Tokenizes `texts` in chunks of [`TOKENIZE_CHUNK`] with `model`'s tokenizer (a panic becomes
/// an error). `None` when the request was answered meanwhile (cancelled, or its deadline
/// passed: then it is answered with `Timeout` here): a call does not go on tokenizing for a
/// caller that has gone.
fn tokenize(
  model: &ModelConfig,
  request: &Request,
  texts: &[String],
) -> Result<Option<Vec<crate::TokenizedText>>, PoolError> {
  let mut encoded = Vec::with_capacity(texts.len());
  for chunk in texts.chunks(TOKENIZE_CHUNK) {
    if request.deadline.is_some_and(|deadline| deadline <= Instant::now()) {
      request.fail(PoolError::Timeout);
    }
    if request.is_finished() {
      return Ok(None);
    }
    let tokenizer = &model.tokenizer;
    let part = catch_unwind(AssertUnwindSafe(|| tokenizer.encode(chunk))).unwrap_or_else(|p| {
      Err(BackendError::new(
        BackendErrorKind::Panic,
        format!("the tokenizer panicked: {}", payload_text(&*p)),
      ))
    })?;
    if part.len() != chunk.len() {
      return Err(PoolError::Backend(BackendError::new(
        BackendErrorKind::Model,
        format!("the tokenizer returned {} encodings for {} texts", part.len(), chunk.len()),
      )));
    }
    encoded.extend(part);
  }
  Ok(Some(encoded))
}

/// Checks that `models` can run on the workers of `config`.
fn validate(config: &PoolConfig, models: &Models) -> Result<(), BackendError> {
  let invalid = |message: String| BackendError::new(BackendErrorKind::InvalidInput, message);
  if config.workers == 0 || config.workers > MAX_MODELS {
    return Err(invalid(format!("a pool has 1 to {MAX_MODELS} workers, not {}", config.workers)));
  }
  if models.models.is_empty() || models.models.len() > MAX_MODELS {
    return Err(invalid(format!(
      "a pool has 1 to {MAX_MODELS} models, not {}",
      models.models.len()
    )));
  }
  for &index in &models.preload {
    let Some(model) = models.models.get(index) else { continue };
    let fits = (0..config.workers).any(|w| model.allows(w) && model.memory <= config.budget(w));
    if !fits {
      return Err(invalid(format!(
        "model {:?} can load on no worker: it needs {} bytes, and the workers it may use ({}) have less memory budget",
        model.name,
        model.memory,
        model.workers.as_ref().map_or_else(
          || "all".to_owned(),
          |w| w.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ),
      )));
    }
  }
  if let Some(&bad) = models.preload.iter().find(|&&m| m >= models.models.len()) {
    return Err(invalid(format!("no model {bad} to preload")));
  }
  Ok(())
}

/// A worker thread's life: its preloads (reported on `ready`), then its loop.
fn start_worker(
  mut worker: WorkerThread,
  preload: &[usize],
  ready: &mpsc::Sender<Result<(), BackendError>>,
) {
  let index = worker.index;
  for &model in preload {
    let config = &worker.registry.models[model].config;
    if !config.allows(index) || config.memory > worker.registry.config.budget(index) {
      continue;
    }
    if let Err(error) = worker.load_claimed(model) {
      let error = match error {
        PoolError::Backend(error) => error,
        other => BackendError::new(BackendErrorKind::InvalidInput, other.to_string()),
      };
      if worker.registry.config.tolerate_device_failures && error.kind == BackendErrorKind::Device {
        let _ = worker.shared().failure.set(error.message.clone());
        let _ = ready.send(Ok(()));
      } else {
        let _ = ready.send(Err(error));
      }
      return;
    }
  }
  let _ = ready.send(Ok(()));
  worker.run();
}

/// A model left without a worker because the devices of all its workers failed.
fn orphaned_model(registry: &Registry) -> Option<BackendError> {
  let failed = |w: usize| registry.workers[w].failure.get();
  registry.models.iter().find_map(|model| {
    let mut allowed = (0..registry.workers.len()).filter(|&w| model.config.allows(w)).peekable();
    allowed.peek()?;
    let mut reasons = Vec::new();
    for worker in allowed {
      reasons.push(format!("worker {worker}: {}", failed(worker)?));
    }
    Some(BackendError::new(
      BackendErrorKind::Device,
      format!("model {:?} has no worker left: {}", model.config.name, reasons.join("; ")),
    ))
  })
}

/// Fails every item in the injectors with `Closed`.
fn drain_injectors(registry: &Registry) {
  for model in &registry.models {
    model.queues.drain(|item| item.request.fail(PoolError::Closed));
  }
}

/// Ends a worker thread's life however it ends (a panic included): answers the commands still
/// pending, marks the worker stopped (unless its device failed) and counts it out, so `close`
/// and the other workers are never left waiting for it.
struct ExitGuard {
  registry: Arc<Registry>,
  index: usize,
}

impl Drop for ExitGuard {
  fn drop(&mut self) {
    let registry = &self.registry;
    let pending = registry.commands[self.index]
      .lock()
      .map_or_else(|poisoned| poisoned.into_inner().take(), |mut c| c.take())
      .unwrap_or_default();
    for command in pending {
      match command {
        Command::Load { done, .. } => {
          let _ = done.send(Err(PoolError::Closed));
        }
        Command::Unload { done, .. } => {
          let _ = done.send(false);
        }
      }
    }
    let worker = &registry.workers[self.index];
    let state = if worker.failure.get().is_some() || std::thread::panicking() {
      WorkerState::Failed
    } else {
      WorkerState::Stopped
    };
    worker.state.store(state as u8, Ordering::Relaxed);
    worker.loaded.store(0, Ordering::Relaxed);
    // They may be waiting for the last item or for the close to be noticed.
    registry.sleep.notify(Wake::All);
    let mut exited = registry.exited.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *exited += 1;
    registry.exited_changed.notify_all();
  }
}

/// A model a worker holds.
struct Slot {
  backend: Box<dyn Backend>,
  usage: Usage,
  last_used: Instant,
  loaded_at: Instant,
}

/// A worker's claim on loading a model: counted in the model's `loading` until dropped.
struct Claim<'a>(&'a AtomicUsize);

impl<'a> Claim<'a> {
  /// The claim, and how many other workers held one when it was taken.
  fn take(loading: &'a AtomicUsize) -> (Self, usize) {
    let before = loading.fetch_add(1, Ordering::SeqCst);
    (Self(loading), before)
  }
}

impl Drop for Claim<'_> {
  fn drop(&mut self) {
    self.0.fetch_sub(1, Ordering::SeqCst);
  }
}

/// One worker's private state (rayon's `WorkerThread`).
struct WorkerThread {
  index: usize,
  registry: Arc<Registry>,
  /// Its deque per model.
  deques: Vec<Worker<Queued>>,
  /// What it holds, per model.
  slots: Vec<Option<Slot>>,
  /// Adaptive budget and cost fit per model (kept across unloads).
  controllers: Vec<Controller>,
  /// When its recent switches happened (for `max_switches_per_hour`).
  switches: VecDeque<Instant>,
  /// Per model: consecutive failed loads, and no new attempt on demand before the instant
  /// given.
  load_failures: Vec<(u32, Option<Instant>)>,
  /// When the earliest such pause of a model with queued work ends.
  retry_at: Option<Instant>,
  /// Batches taken so far (drives the fairness tick).
  tick: u64,
  /// Consecutive failed batches (drives the back-off).
  failures: u32,
  /// xorshift state for choosing steal victims.
  rng: u64,
  /// Per model: the bulk length class its sweep takes from next.
  cursors: Vec<usize>,
  /// Reused output buffer.
  out: Vec<f32>,
}

impl Drop for WorkerThread {
  /// Whatever its deques still hold when it goes (only after a failure: a normal exit leaves
  /// them empty) is answered, not lost.
  fn drop(&mut self) {
    for deque in &self.deques {
      while let Some(item) = deque.pop() {
        item.request.fail(PoolError::Closed);
      }
    }
  }
}

impl WorkerThread {
  fn new(index: usize, registry: Arc<Registry>, deques: Vec<Worker<Queued>>) -> Self {
    let models = registry.models.len();
    let controllers = (0..models)
      .map(|_| Controller::new(registry.config.adaptive, registry.config.policy.max_batch_tokens))
      .collect::<Vec<_>>();
    registry.workers[index].token_budget.store(controllers[0].budget(), Ordering::Relaxed);
    Self {
      index,
      registry,
      deques,
      slots: (0..models).map(|_| None).collect(),
      controllers,
      switches: VecDeque::new(),
      load_failures: vec![(0, None); models],
      retry_at: None,
      tick: 0,
      failures: 0,
      rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1),
      cursors: vec![CLASSES - 1; models],
      out: Vec::new(),
    }
  }

  fn shared(&self) -> &WorkerShared {
    &self.registry.workers[self.index]
  }

  fn set_state(&self, state: WorkerState) {
    self.shared().state.store(state as u8, Ordering::Relaxed);
  }

  /// Whether its batches have failed `max_attempts` times in a row.
  fn failing(&self) -> bool {
    self.failures >= self.registry.config.max_attempts.max(1)
  }

  /// The worker's loop ([`run_worker`]: the sleep epoch is read before each round). A panic
  /// outside the backend call (which has its own guard) fails the calls whose texts the worker
  /// held, counts as a failed batch, and the worker goes on after its back-off.
  fn run(mut self) {
    let registry = Arc::clone(&self.registry);
    run_worker(&registry.sleep, self.index, || {
      let round = catch_unwind(AssertUnwindSafe(|| self.round()));
      // Items it dropped this round (run, answered, expired) may make room.
      registry.admit_waiting();
      round.unwrap_or_else(|panic| {
        let error = BackendError::new(BackendErrorKind::Panic, panic_message(&*panic));
        self.failures += 1;
        self.shared().errors.fetch_add(1, Ordering::Relaxed);
        registry.emit(Event::WorkerFailed { worker: self.index, error });
        self.back_off();
        Round::Worked
      })
    });
  }

  /// One round of the loop: the lifecycle, commands, idle unloads, then a batch if there is one.
  fn round(&mut self) -> Round {
    let mode = self.registry.closing();
    if mode == CANCEL {
      self.cancel_local();
      drain_injectors(&self.registry);
      return Round::Exit;
    }
    self.handle_commands();
    let next_idle_check = self.unload_idle();
    if let Some(found) = self.find_work() {
      self.run_batch(found);
      return Round::Worked;
    }
    // SeqCst with the reservation in `submit` and the decrement in `Queued::drop`: zero means
    // every accepted item has been settled and no submit can still add one.
    // Waiting requests first: one is counted there until its places are reserved.
    if mode == DRAIN
      && self.registry.admission.items.load(Ordering::SeqCst) == 0
      && self.registry.outstanding.items.load(Ordering::SeqCst) == 0
    {
      return Round::Exit;
    }
    self.set_state(WorkerState::Idle);
    let retry = self.retry_at.map(|at| at.saturating_duration_since(Instant::now()));
    Round::Idle(next_idle_check.into_iter().chain(retry).min())
  }

  fn handle_commands(&mut self) {
    let commands =
      lock(&self.registry.commands[self.index]).as_mut().map(std::mem::take).unwrap_or_default();
    for command in commands {
      match command {
        Command::Load { model, done } => {
          let _ = done.send(self.load_claimed(model));
        }
        Command::Unload { model, done } => {
          let _ = done.send(self.unload(model, UnloadReason::Requested));
        }
      }
    }
  }

  fn cancel_local(&self) {
    for deque in &self.deques {
      while let Some(item) = deque.pop() {
        item.request.fail(PoolError::Closed);
      }
    }
  }

  fn next_random(&mut self) -> u64 {
    self.rng ^= self.rng << 13;
    self.rng ^= self.rng >> 7;
    self.rng ^= self.rng << 17;
    self.rng
  }

  /// Whether one more switch fits under `max_switches_per_hour` (always while draining).
  fn may_switch(&mut self, now: Instant) -> bool {
    let Some(cap) = self.registry.config.max_switches_per_hour else { return true };
    if self.registry.closing() == DRAIN {
      return true;
    }
    while self.switches.front().is_some_and(|&t| now.duration_since(t) >= HOUR) {
      self.switches.pop_front();
    }
    self.switches.len() < cap as usize
  }

  /// [`WorkerThread::load`] under a claim of its own (a load that was asked for, not decided:
  /// it never evicts a model of higher priority).
  fn load_claimed(&mut self, model: usize) -> Result<(), PoolError> {
    let registry = Arc::clone(&self.registry);
    let (_claim, _) = Claim::take(&registry.models[model].loading);
    self.load(model, false)
  }

  /// What `model` would evict here (lowest priority first, then lowest usage score), or why it
  /// cannot load. A model of higher priority is evicted only `on_demand`, when it has no queued
  /// work and `model`'s work has waited `switch_delay`: priority decides who waits while the
  /// devices are contended, it does not keep a model out for good.
  fn victims(
    &mut self,
    model: usize,
    on_demand: bool,
    now: Instant,
  ) -> Result<Vec<usize>, PoolError> {
    let registry = Arc::clone(&self.registry);
    let shared = &registry.models[model];
    let (name, need, priority) =
      (&shared.config.name, shared.config.memory, shared.config.priority);
    let budget = registry.config.budget(self.index);
    if need > budget {
      return Err(PoolError::Unavailable(format!(
        "model {name:?} needs {need} bytes, more than worker {}'s memory budget of {budget}",
        self.index
      )));
    }
    let key = |m: usize| {
      let slot = self.slots[m].as_ref().expect("only loaded models are ranked");
      (registry.models[m].config.priority, slot.usage.score(now))
    };
    let mut held: Vec<usize> = (0..self.slots.len()).filter(|&m| self.slots[m].is_some()).collect();
    held.sort_by(|&a, &b| key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal));
    let waited = Duration::from_nanos(
      registry.nanos_since_epoch().saturating_sub(shared.served_at.load(Ordering::Relaxed)),
    );
    let mut used = self.shared().memory_used.load(Ordering::Relaxed);
    let mut victims = Vec::new();
    for victim in held {
      if used.saturating_add(need) <= budget {
        break;
      }
      let outranking = &registry.models[victim];
      if outranking.config.priority > priority {
        let idle = outranking.queued_items() == 0;
        if !(on_demand && idle && waited >= registry.config.switch_delay) {
          return Err(PoolError::Unavailable(format!(
            "model {name:?} fits on worker {} only by evicting {:?}, which has a higher priority{}",
            self.index,
            outranking.config.name,
            if idle { "" } else { " and queued work" },
          )));
        }
      }
      victims.push(victim);
      used -= outranking.config.memory;
    }
    if !victims.is_empty() && !self.may_switch(now) {
      return Err(PoolError::Unavailable(format!(
        "worker {} has made its {} model switches this hour",
        self.index,
        registry.config.max_switches_per_hour.unwrap_or_default()
      )));
    }
    Ok(victims)
  }

  /// Builds `model`'s backend on this thread (a panic becomes an error) and checks its width.
  fn build(&self, model: usize) -> Result<Box<dyn Backend>, BackendError> {
    let registry = &self.registry;
    let shared = &registry.models[model];
    catch_unwind(AssertUnwindSafe(|| (registry.factory)(self.index, model)))
      .unwrap_or_else(|panic| {
        Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
      })
      .and_then(|backend| {
        let width = backend.dimension();
        let expected = *shared.dimension.get_or_init(|| width);
        if width == expected {
          Ok(backend)
        } else {
          Err(BackendError::new(
            BackendErrorKind::Model,
            format!(
              "model {:?} gives {width} values per text on worker {}, {expected} elsewhere",
              shared.config.name, self.index
            ),
          ))
        }
      })
  }

  /// Makes a built backend of `model` this worker's.
  fn install(&mut self, model: usize, backend: Box<dyn Backend>, started: Instant) {
    let registry = Arc::clone(&self.registry);
    let shared = &registry.models[model];
    let loaded_at = Instant::now();
    self.slots[model] =
      Some(Slot { backend, usage: Usage::new(loaded_at), last_used: loaded_at, loaded_at });
    let worker = self.shared();
    worker.loaded.fetch_or(1 << model, Ordering::Relaxed);
    worker.memory_used.fetch_add(shared.config.memory, Ordering::Relaxed);
    worker.loads.fetch_add(1, Ordering::Relaxed);
    shared.loads.fetch_add(1, Ordering::Relaxed);
    self.load_failures[model] = (0, None);
    registry.emit(Event::ModelLoaded { model, worker: self.index, took: started.elapsed() });
    // Workers waiting for this model may now steal from this one.
    registry.sleep.notify(Wake::All);
  }

  /// Loads `model` here, evicting what no longer fits ([`WorkerThread::victims`]). The caller
  /// holds a [`Claim`] on the model while it loads. A load that fails after evicting loads the
  /// evicted models again, and only a load that succeeds counts as a switch.
  fn load(&mut self, model: usize, on_demand: bool) -> Result<(), PoolError> {
    if self.slots[model].is_some() {
      return Ok(());
    }
    let now = Instant::now();
    let victims = self.victims(model, on_demand, now)?;
    for &victim in &victims {
      self.unload(victim, UnloadReason::Evicted { for_model: model });
    }
    self.set_state(WorkerState::Loading);
    let started = Instant::now();
    let built = self.build(model);
    let built = match built {
      Ok(backend) => {
        self.install(model, backend, started);
        Ok(())
      }
      Err(error) => {
        let failures = self.load_failures[model].0 + 1;
        let pause = self.registry.config.backoff(failures);
        self.load_failures[model] = (failures, Some(Instant::now() + pause));
        self.registry.emit(Event::ModelLoadFailed {
          model,
          worker: self.index,
          error: error.clone(),
        });
        // Put back what was evicted for it, so the worker is not left with neither.
        for &victim in &victims {
          let again = Instant::now();
          if let Ok(backend) = self.build(victim) {
            self.install(victim, backend, again);
          }
        }
        Err(PoolError::Backend(error))
      }
    };
    self.set_state(WorkerState::Idle);
    if built.is_ok() && !victims.is_empty() {
      if self.registry.config.max_switches_per_hour.is_some() {
        self.switches.push_back(now);
      }
      self.shared().switches.fetch_add(1, Ordering::Relaxed);
    }
    built
  }

  /// Unloads `model` here, handing its items in this worker's deque back to the injectors.
  /// Returns whether it was loaded.
  fn unload(&mut self, model: usize, reason: UnloadReason) -> bool {
    let Some(slot) = self.slots[model].take() else { return false };
    drop(slot);
    let registry = Arc::clone(&self.registry);
    let shared = &registry.models[model];
    let worker = self.shared();
    worker.loaded.fetch_and(!(1 << model), Ordering::Relaxed);
    worker.memory_used.fetch_sub(shared.config.memory, Ordering::Relaxed);
    shared.unloads.fetch_add(1, Ordering::Relaxed);
    if matches!(reason, UnloadReason::Evicted { .. }) {
      shared.evictions.fetch_add(1, Ordering::Relaxed);
      worker.evictions.fetch_add(1, Ordering::Relaxed);
    }
    let mut moved = false;
    while let Some(item) = self.deques[model].pop() {
      registry.push(item);
      moved = true;
    }
    if moved {
      registry.sleep.notify(Wake::All);
    }
    registry.emit(Event::ModelUnloaded { model, worker: self.index, reason });
    true
  }

  /// Unloads the models unused for `idle_timeout`; returns how long until the next one may be
  /// due.
  fn unload_idle(&mut self) -> Option<Duration> {
    let timeout = self.registry.config.idle_timeout?;
    let now = Instant::now();
    let mut next: Option<Duration> = None;
    for model in 0..self.slots.len() {
      let Some(slot) = &self.slots[model] else { continue };
      let idle = now.saturating_duration_since(slot.last_used);
      if idle >= timeout {
        self.unload(model, UnloadReason::Idle);
      } else {
        let left = timeout.saturating_sub(idle);
        next = Some(next.map_or(left, |n| n.min(left)));
      }
    }
    next
  }

  /// Drops the answered and expired items of `model` from its injectors.
  fn purge(&self, model: usize) {
    let queues = &self.registry.models[model].queues;
    let now = Instant::now();
    let mut live = Vec::new();
    queues.drain(|item| live.extend(runnable(item, now)));
    for item in live {
      queues.push(item);
    }
  }

  /// Fails every queued item of `model` this worker can reach with `error` (no worker holds it
  /// and its load failed).
  fn fail_model(&self, model: usize, error: &BackendError) {
    let fail = |item: Queued| item.request.fail(PoolError::Backend(error.clone()));
    self.registry.models[model].queues.drain(fail);
    while let Some(item) = self.deques[model].pop() {
      fail(item);
    }
  }

  /// Which model to run next (module docs, step 2), loading it when that is justified. `skip`:
  /// models already found empty this round.
  fn choose_model(&mut self, skip: u64) -> Option<usize> {
    let registry = Arc::clone(&self.registry);
    let now = registry.nanos_since_epoch();
    let unserved = |m: &ModelShared| now.saturating_sub(m.served_at.load(Ordering::Relaxed));
    let mut current: Option<(i32, bool, u64, usize)> = None;
    let mut others = Vec::new();
    for (model, shared) in registry.models.iter().enumerate() {
      if skip & (1 << model) != 0 || !shared.config.allows(self.index) {
        continue;
      }
      if shared.queued_items() == 0 && self.deques[model].is_empty() {
        continue;
      }
      if self.slots[model].is_some() {
        let key =
          (shared.config.priority, shared.queues.has_interactive(), unserved(shared), model);
        if current.is_none_or(|c| key > c) {
          current = Some(key);
        }
      } else {
        others.push(model);
      }
    }
    others.sort_by_key(|&m| {
      std::cmp::Reverse((registry.models[m].config.priority, unserved(&registry.models[m])))
    });
    self.retry_at = None;
    let instant = Instant::now();
    for model in others {
      let shared = &registry.models[model];
      if let Some(at) = self.load_failures[model].1.filter(|&at| instant < at) {
        // A load failed or was refused a moment ago: look again when the pause ends.
        self.retry_by(at);
        continue;
      }
      let running = current.map(|c| (c.0, c.3));
      if !self.load_justified(model, shared.loading.load(Ordering::SeqCst), running) {
        continue;
      }
      // Claim the load and decide again with the claims taken before this one: of workers
      // deciding at the same moment, the first claim goes on and the others step back. A worker
      // only claims what it decided to load, so a claim never turns the others away for
      // nothing unless the load then fails, and then they are woken.
      let (claim, others_loading) = Claim::take(&shared.loading);
      if !self.load_justified(model, others_loading, running) {
        continue;
      }
      let nobody = registry.holders(model) == 0 && others_loading == 0;
      if nobody {
        // No worker would meet its dead items: drop them before loading for nothing.
        self.purge(model);
        if shared.queued_items() == 0 && self.deques[model].is_empty() {
          continue;
        }
      }
      let loaded = self.load(model, true);
      drop(claim);
      match loaded {
        Ok(()) => return Some(model),
        Err(PoolError::Backend(error)) => {
          if registry.holders(model) == 0 && shared.loading.load(Ordering::SeqCst) == 0 {
            self.fail_model(model, &error);
          }
        }
        Err(_) => {
          // No room here now (budget, priorities, switch cap): try again after a pause.
          let pause = registry.config.switch_delay.max(REFUSED_PAUSE);
          self.load_failures[model].1 = Some(Instant::now() + pause);
        }
      }
      // Workers that stepped back for this claim look again; this one does when its pause ends
      // (to retry, or to drop calls answered meanwhile that no worker would meet).
      if let Some(at) = self.load_failures[model].1 {
        self.retry_by(at);
      }
      registry.sleep.notify(Wake::All);
    }
    current.map(|c| c.3)
  }

  /// Makes the worker look at the models again by `at` at the latest.
  fn retry_by(&mut self, at: Instant) {
    self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
  }

  /// Whether work queued for `model`, which this worker does not hold, justifies loading it
  /// while it could run `current` (priority, model) instead (module docs, step 2). `loading`:
  /// other workers loading it now.
  fn load_justified(&self, model: usize, loading: usize, current: Option<(i32, usize)>) -> bool {
    let registry = &self.registry;
    let shared = &registry.models[model];
    let holders = registry.holders(model) + loading;
    let more_than_holders_take =
      shared.queued_items() > registry.config.policy.max_batch_size.max(1) * holders;
    match current {
      // Busy with a model of the same or a higher priority: switch only to a model loaded
      // nowhere that has waited `switch_delay`, away from a model held at least that long.
      Some((priority, running)) if shared.config.priority <= priority => {
        let delay = registry.config.switch_delay;
        let unserved =
          registry.nanos_since_epoch().saturating_sub(shared.served_at.load(Ordering::Relaxed));
        shared.config.priority == priority
          && holders == 0
          && Duration::from_nanos(unserved) >= delay
          && self.slots[running].as_ref().is_some_and(|s| s.loaded_at.elapsed() >= delay)
      }
      // Idle, or the model outranks what it runs: load it unless its holders take its work.
      _ => holders == 0 || more_than_holders_take,
    }
  }

  /// This worker's share of `model`'s queued tokens ([`fair_share`]): what it should take so
  /// that it finishes with every other worker holding the model, given their measured speeds
  /// and the batches they are running. A worker not measured yet counts at the mean of the
  /// measured ones; when none is measured, all count as equal and free.
  fn share(&self, model: usize) -> usize {
    let r = &self.registry;
    let shared = &r.models[model];
    let queued = shared
      .outstanding
      .tokens
      .load(Ordering::Relaxed)
      .saturating_sub(shared.in_flight_tokens.load(Ordering::Relaxed));
    let queued_items = shared.queued_items();
    let speed_of =
      |w: &WorkerShared| f64::from_bits(w.models[model].token_speed.load(Ordering::Relaxed));
    let (known, measured) = r
      .workers
      .iter()
      .map(speed_of)
      .filter(|&s| s > 0.0)
      .fold((0.0, 0_u32), |(sum, n), s| (sum + s, n + 1));
    let mean = if measured == 0 { None } else { Some(known / f64::from(measured)) };
    let now = r.nanos_since_epoch();
    let mut peers = Vec::with_capacity(r.workers.len());
    for (index, w) in r.workers.iter().enumerate() {
      if index == self.index || !w.holds(model) || !w.state().serves() {
        continue;
      }
      let own = speed_of(w);
      let speed = if own > 0.0 { own } else { mean.unwrap_or(1.0) };
      // A peer that cannot predict its batch yet counts as free: guessing its work too small
      // costs one more batch, guessing it too large leaves this worker running alone at the end.
      let expected = w.batch_expected.load(Ordering::Relaxed);
      let running = now.saturating_sub(w.batch_started.load(Ordering::Relaxed));
      #[expect(clippy::cast_precision_loss, reason = "nanoseconds of one batch")]
      let free_in = expected.saturating_sub(running) as f64 * 1e-9;
      peers.push(Peer { free_in, speed });
    }
    let own = speed_of(self.shared());
    let mine = if own > 0.0 { own } else { mean.unwrap_or(1.0) };
    #[expect(
      clippy::cast_precision_loss,
      clippy::cast_possible_truncation,
      clippy::cast_sign_loss,
      reason = "token counts are far below 2^52"
    )]
    let share = fair_share(queued as f64, mine, &mut peers).ceil() as usize;
    // Items are whole: round the share to the nearest item rather than down, or the last items
    // of a job are left over for an extra round of small batches.
    share.saturating_add(queued / queued_items.max(1) / 2).max(1)
  }

  /// Picks a model and finds its next batch. `None` when nothing is runnable anywhere for the
  /// models this worker may run.
  fn find_work(&mut self) -> Option<(usize, Vec<Queued>, bool)> {
    let mut skip = 0_u64;
    for _ in 0..self.registry.models.len() {
      let model = self.choose_model(skip)?;
      if let Some((batch, bound)) = self.find_batch(model) {
        return Some((model, batch, bound));
      }
      skip |= 1 << model;
    }
    None
  }

  /// Looks for the next batch of `model` (module docs, steps 3–5). The flag tells whether the
  /// adaptive token budget bounded the batch.
  fn find_batch(&mut self, model: usize) -> Option<(Vec<Queued>, bool)> {
    let policy = self.registry.config.policy;
    let share = self.share(model);
    let cap = policy.max_batch_size.max(1);
    let controller = &self.controllers[model];
    let mut budget = controller.budget().min(share);
    if self.shared().models[model].token_speed.load(Ordering::Relaxed) == 0 {
      // Speed not measured yet: a first, smaller batch measures it without handing a slow
      // device a large part of the queue.
      budget = budget.div_ceil(FIRST_BATCH_DIVISOR);
    }
    let adaptive_bound = budget >= controller.budget();
    self.tick += 1;
    let bulk_first = self.tick.is_multiple_of(FAIRNESS_INTERVAL);
    let mut held = false;
    loop {
      let candidates = self.gather(model, cap, budget, bulk_first);
      if candidates.is_empty() {
        return None;
      }
      let now = Instant::now();
      let candidates: Vec<Queued> =
        candidates.into_iter().filter_map(|item| runnable(item, now)).collect();
      if candidates.is_empty() {
        // Everything gathered was dead (answered or expired): look again, more may be queued.
        continue;
      }
      if !held
        && !policy.max_wait.is_zero()
        && candidates.len() < cap
        && self.registry.closing() == OPEN
      {
        let oldest =
          candidates.iter().map(|c| c.admitted_at).min().expect("candidates is not empty");
        let waited = oldest.elapsed();
        if waited < policy.max_wait {
          // Hold the partial batch open once: put it back and wait for more arrivals.
          held = true;
          let seen = self.registry.sleep.epoch();
          for item in candidates {
            self.deques[model].push(item);
          }
          let wait = policy.max_wait.saturating_sub(waited);
          self.registry.sleep.sleep(self.index, seen, Some(wait));
          continue;
        }
      }
      let mut selection =
        select(candidates, cap, budget, policy.max_padding, self.controllers[model].cost_model());
      // The rest goes back in length order: a thief takes from the front, so what it steals is a
      // run of similar lengths that batches with little padding.
      selection.rest.sort_by_key(Queued::len);
      for item in selection.rest {
        self.deques[model].push(item);
      }
      if !self.deques[model].is_empty() || !self.registry.models[model].queues.is_empty() {
        // Work is left: let an idle worker that holds the model have it.
        let prefer = self.registry.holder_mask(model) & !(1 << self.index);
        self.registry.sleep.notify(Wake::One { prefer });
      }
      return Some((selection.batch, selection.budget_bound && adaptive_bound));
    }
  }

  /// Collects candidates of `model`: interactive items first (unless it is bulk's turn), else
  /// what the local deque holds, topped up from the bulk length classes to `cap` items and
  /// `budget` tokens, else a steal.
  fn gather(&mut self, model: usize, cap: usize, budget: usize, bulk_first: bool) -> Vec<Queued> {
    let window = self.registry.config.policy.window.max(cap);
    let registry = Arc::clone(&self.registry);
    let queues = &registry.models[model].queues;
    let mut candidates = Vec::new();
    if !bulk_first {
      queues.take_interactive(cap, &mut candidates);
      if !candidates.is_empty() {
        return candidates;
      }
    }
    pop_into(&self.deques[model], &mut candidates, window);
    let held: usize = candidates.iter().map(Queued::len).sum();
    if candidates.len() < cap && held < budget {
      queues.refill(
        &self.deques[model],
        &mut self.cursors[model],
        cap - candidates.len(),
        budget - held,
      );
      pop_into(&self.deques[model], &mut candidates, window);
    }
    if candidates.is_empty() {
      self.steal(model);
      pop_into(&self.deques[model], &mut candidates, window);
    }
    if candidates.is_empty() && bulk_first {
      queues.take_interactive(cap, &mut candidates);
    }
    candidates
  }

  /// Steals a batch of `model`'s items from random victims into the local deque (crossbeam's
  /// `find_task` shape: loop only while some victim answered `Retry`).
  fn steal(&mut self, model: usize) {
    let count = self.registry.stealers.len();
    if count < 2 {
      return;
    }
    for _ in 0..STEAL_ROUNDS {
      let start = usize::try_from(self.next_random() % count as u64).unwrap_or(0);
      let mut retry = false;
      for offset in 0..count {
        let victim = (start + offset) % count;
        if victim == self.index {
          continue;
        }
        match self.registry.stealers[victim][model].steal_batch(&self.deques[model]) {
          Steal::Success(()) => {
            self.shared().steals.fetch_add(1, Ordering::Relaxed);
            return;
          }
          Steal::Retry => retry = true,
          Steal::Empty => {}
        }
      }
      if !retry {
        return;
      }
    }
  }

  /// Runs one batch of `model` and settles every item in it (module docs, step 6).
  fn run_batch(&mut self, (model, batch, budget_bound): (usize, Vec<Queued>, bool)) {
    let registry = Arc::clone(&self.registry);
    let shared_model = &registry.models[model];
    let count = batch.len();
    let padded = batch.iter().map(Queued::len).max().unwrap_or(0) * count;
    let real: usize = batch.iter().map(Queued::len).sum();
    shared_model.in_flight.fetch_add(count, Ordering::Relaxed);
    shared_model.in_flight_tokens.fetch_add(real, Ordering::Relaxed);
    shared_model.served_at.store(registry.nanos_since_epoch(), Ordering::Relaxed);
    self.set_state(WorkerState::Busy);
    let shared = &registry.workers[self.index];
    shared.batch_expected.store(self.predict(model, padded), Ordering::Relaxed);
    shared.batch_started.store(registry.nanos_since_epoch(), Ordering::Relaxed);
    let started = Instant::now();
    for item in &batch {
      shared_model
        .histograms
        .queue_wait
        .record_duration(started.saturating_duration_since(item.admitted_at));
    }
    let result = self.execute(model, &batch);
    let elapsed = started.elapsed();
    let finished = Instant::now();
    let per_model = &shared.models[model];
    shared.batch_expected.store(0, Ordering::Relaxed);
    shared.batches.fetch_add(1, Ordering::Relaxed);
    per_model.batches.fetch_add(1, Ordering::Relaxed);
    per_model.histograms.inference.record_duration(elapsed);
    per_model.histograms.batch_size.record_count(count);
    shared
      .busy_nanos
      .fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    shared_model.in_flight.fetch_sub(count, Ordering::Relaxed);
    shared_model.in_flight_tokens.fetch_sub(real, Ordering::Relaxed);
    match result {
      Ok(()) => {
        self.controllers[model].observe(padded, elapsed, budget_bound);
        self.record_speed(model, count, padded, elapsed);
        self.complete(model, batch, finished);
      }
      Err(error) => {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        self.settle_failure(model, batch, &error, padded);
      }
    }
    shared.token_budget.store(self.controllers[model].budget(), Ordering::Relaxed);
  }

  /// Runs `batch` on this worker's backend of `model` (a panic becomes an error); on success
  /// its rows are in `self.out`.
  fn execute(&mut self, model: usize, batch: &[Queued]) -> Result<(), BackendError> {
    let slot = self.slots[model].as_mut().expect("a batch runs on a loaded model");
    let dimension = slot.backend.dimension();
    self.out.clear();
    self.out.resize(batch.len() * dimension, 0.0);
    let inputs: Vec<&crate::TokenizedText> = batch.iter().map(|q| &q.input).collect();
    let (backend, out) = (&mut slot.backend, &mut self.out);
    let result =
      catch_unwind(AssertUnwindSafe(|| backend.run(&inputs, out))).unwrap_or_else(|panic| {
        Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
      });
    slot.last_used = Instant::now();
    result
  }

  /// Hands the rows in `self.out` of a successful run of `batch` to their requests.
  fn complete(&mut self, model: usize, batch: Vec<Queued>, finished: Instant) {
    let registry = Arc::clone(&self.registry);
    let count = batch.len();
    let slot = self.slots[model].as_mut().expect("a batch runs on a loaded model");
    let dimension = slot.backend.dimension();
    slot.usage.add(count, finished);
    if self.failing() {
      registry.emit(Event::WorkerRecovered { worker: self.index });
    }
    self.failures = 0;
    let shared = &registry.workers[self.index];
    shared.items.fetch_add(count as u64, Ordering::Relaxed);
    shared.models[model].items.fetch_add(count as u64, Ordering::Relaxed);
    registry.models[model].items.fetch_add(count as u64, Ordering::Relaxed);
    for (item, row) in batch.into_iter().zip(self.out.chunks_exact(dimension.max(1))) {
      // Settle the item (it leaves `outstanding`) before its request may be answered, so a
      // caller that gets its answer never sees its own items still counted.
      let (request, index) = (Arc::clone(&item.request), item.index);
      drop(item);
      request.complete_row(index, row);
    }
  }

  /// Expected nanoseconds of a batch of `padded` tokens of `model` on this worker, from its
  /// fitted cost model (0 before it has one: a speed averaged over a few small batches
  /// overestimates).
  #[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "token counts and nanoseconds of one batch"
  )]
  fn predict(&self, model: usize, padded: usize) -> u64 {
    self.controllers[model]
      .cost_model()
      .map_or(0, |cost| ((cost.fixed + cost.per_token * padded as f64) * 1e9) as u64)
  }

  /// Folds one batch into the worker's measured speeds (moving averages; the token speed is the
  /// fitted marginal speed when the cost model has one).
  fn record_speed(&self, model: usize, items: usize, padded: usize, elapsed: Duration) {
    if elapsed.is_zero() {
      return;
    }
    let seconds = elapsed.as_secs_f64();
    let fold = |speed: &AtomicU64, amount: usize| {
      #[expect(clippy::cast_precision_loss, reason = "batch sizes are small")]
      let rate = amount as f64 / seconds;
      let old = f64::from_bits(speed.load(Ordering::Relaxed));
      let new = if old > 0.0 { old * 0.7 + rate * 0.3 } else { rate };
      speed.store(new.to_bits(), Ordering::Relaxed);
    };
    fold(&self.shared().speed, items);
    let token_speed = &self.shared().models[model].token_speed;
    if let Some(cost) = self.controllers[model].cost_model() {
      token_speed.store((1.0 / cost.per_token).to_bits(), Ordering::Relaxed);
    } else {
      fold(token_speed, padded.max(1));
    }
  }

  /// Failure semantics (module docs, step 6).
  fn settle_failure(
    &mut self,
    model: usize,
    batch: Vec<Queued>,
    error: &BackendError,
    padded: usize,
  ) {
    let cancelling = self.registry.closing() == CANCEL;
    if error.kind == BackendErrorKind::OutOfMemory && batch.len() > 1 && !cancelling {
      // Smaller batches may fit: halve the budget for good and run the items again.
      self.controllers[model].out_of_memory(padded);
      for item in batch {
        self.deques[model].push(item);
      }
    } else if batch.len() > 1 && !cancelling {
      self.isolate(model, batch, error);
    } else {
      for item in batch {
        self.retry_or_fail(item, error, cancelling);
      }
      if error.kind != BackendErrorKind::InvalidInput {
        self.worker_failed(error);
      }
    }
  }

  /// One text can make a whole batch fail: runs the batch again in halves, and the failing
  /// halves in halves again, so that only the texts that fail on their own are retried or
  /// failed, and the texts batched with them are answered. When no part succeeds, the worker
  /// rather than a text is at fault: that counts as one failed batch, with its back-off.
  fn isolate(&mut self, model: usize, batch: Vec<Queued>, error: &BackendError) {
    let halve = |mut part: Vec<Queued>| {
      let second = part.split_off(part.len() / 2);
      [part, second]
    };
    let mut parts = Vec::from(halve(batch));
    let mut succeeded = false;
    let mut culprits = Vec::new();
    while let Some(part) = parts.pop() {
      if self.registry.closing() == CANCEL {
        culprits.extend(part.into_iter().map(|item| (item, error.clone())));
        continue;
      }
      match self.execute(model, &part) {
        Ok(()) => {
          succeeded = true;
          self.complete(model, part, Instant::now());
        }
        Err(_) if part.len() > 1 => parts.extend(halve(part)),
        Err(own) => culprits.extend(part.into_iter().map(|item| (item, own.clone()))),
      }
    }
    let cancelling = self.registry.closing() == CANCEL;
    for (item, own) in culprits {
      self.retry_or_fail(item, &own, cancelling);
    }
    if !succeeded && error.kind != BackendErrorKind::InvalidInput {
      self.worker_failed(error);
    }
  }

  /// A text whose run failed: failed at once for invalid input, when the pool is cancelling or
  /// after `max_attempts` runs; else queued again for any worker.
  fn retry_or_fail(&self, mut item: Queued, error: &BackendError, cancelling: bool) {
    let registry = &self.registry;
    item.attempts += 1;
    let last = item.attempts >= registry.config.max_attempts.max(1);
    if last || cancelling || error.kind == BackendErrorKind::InvalidInput {
      let request = Arc::clone(&item.request);
      drop(item);
      request.fail(if cancelling { PoolError::Closed } else { PoolError::Backend(error.clone()) });
    } else if !item.request.is_finished() {
      registry.push(item);
      registry.sleep.notify(Wake::All);
    }
  }

  /// Counts a failed batch against the worker and backs off.
  fn worker_failed(&mut self, error: &BackendError) {
    self.failures += 1;
    if self.failures == self.registry.config.max_attempts.max(1) {
      self.registry.emit(Event::WorkerFailed { worker: self.index, error: error.clone() });
    }
    self.back_off();
  }

  /// Pauses after consecutive failures: `backoff_initial × 2^(failures-1)`, at most
  /// `backoff_max`; cut short when the pool closes.
  fn back_off(&self) {
    let pause = self.registry.config.backoff(self.failures);
    if pause.is_zero() {
      return;
    }
    self.set_state(if self.failing() { WorkerState::Failed } else { WorkerState::BackingOff });
    let until = Instant::now() + pause;
    while self.registry.closing() != CANCEL {
      let now = Instant::now();
      if now >= until {
        break;
      }
      std::thread::park_timeout(until - now);
    }
  }
}

/// Moves items from `deque` into `out` until it holds `window`.
fn pop_into(deque: &Worker<Queued>, out: &mut Vec<Queued>, window: usize) {
  while out.len() < window {
    let Some(item) = deque.pop() else { break };
    out.push(item);
  }
}

/// `item` when it should still run. Otherwise it is dropped, and when its deadline passed its
/// request is answered with `Timeout`, after the drop: a caller never sees its answered items
/// still counted.
fn runnable(item: Queued, now: Instant) -> Option<Queued> {
  if item.request.is_finished() {
    return None;
  }
  if item.request.deadline.is_some_and(|deadline| deadline <= now) {
    let request = Arc::clone(&item.request);
    drop(item);
    request.fail(PoolError::Timeout);
    return None;
  }
  Some(item)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
  format!("the backend panicked: {}", payload_text(panic))
}

/// The message a panic carried.
fn payload_text(panic: &(dyn std::any::Any + Send)) -> String {
  panic
    .downcast_ref::<&str>()
    .map(ToString::to_string)
    .or_else(|| panic.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "unknown payload".to_owned())
}
