//! The scheduler: injectors (interactive, and bulk by length class), a work-stealing deque per
//! worker, one OS thread per worker, and the request lifecycle.
//!
//! How an item travels:
//! 1. `submit` tokenizes on the caller's thread, checks admission (`max_queued_items`), pushes
//!    every item into its injector ([`Queues`]: interactive items in arrival order, bulk items
//!    by length class) and wakes workers ([`Sleep`]).
//! 2. A worker whose device is free first works out its *share* of the queued tokens
//!    ([`fair_share`]): enough to finish together with every other worker, given their measured
//!    speeds and the batches they are running. Its token budget for the batch is the smaller of
//!    that share and its adaptive budget, so the tail of a job is spread over every worker and a
//!    slow device is not handed as much as a fast one.
//! 3. It looks for work in this order ([`WorkerThread::find_work`]): interactive items (unless
//!    the fairness tick says bulk goes first this time), then its own deque, topped up from the
//!    bulk length classes (a sweep downwards from its cursor) to the budget, then a batch stolen
//!    from a random other worker.
//! 4. It cuts a batch from what it holds ([`select`]): length-sorted, the most urgent item
//!    included, capped by `max_batch_size`, the budget and the padding bound. The rest goes back
//!    to its deque in length order, where idle workers can steal it.
//! 5. The batch runs outside every lock, under `catch_unwind`. Rows go to their requests by
//!    index. On failure: out-of-memory halves the budget and requeues the items; invalid input
//!    fails their requests; any other error (or a panic) requeues the items for another worker
//!    up to `max_attempts`, and the worker backs off exponentially until it succeeds again.
//! 6. Items of answered requests (failed, cancelled) and items past their deadline are dropped
//!    when a worker meets them; they never run.
//! 7. `close` stops admission; in drain mode workers run until no item is outstanding, in cancel
//!    mode every queued item fails with `Closed`. It returns once every thread has exited.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{
    Arc, Mutex,
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
  batch::{Outstanding, Queued, select},
  metrics::{HistogramSnapshot, PoolHistograms, WorkerHistograms},
  queue::{CLASSES, Queues},
  request::{Reply, Request, SubmitOptions},
  share::{Peer, fair_share},
  sleep::{Sleep, Wake},
};

/// Bulk goes first on every `FAIRNESS_INTERVAL`-th batch, even when interactive work waits, so
/// bulk is never starved (tokio's `global_queue_interval` idea).
const FAIRNESS_INTERVAL: u64 = 4;

/// A worker whose speed is not yet measured runs batches this many times smaller.
const FIRST_BATCH_DIVISOR: usize = 4;

/// How many random victims a worker tries per steal round before it concludes there is nothing.
const STEAL_ROUNDS: usize = 2;

/// How the pool runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
  /// Number of worker threads; each builds its own backend.
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
    }
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
  /// Pausing after a failed batch.
  BackingOff,
  /// Exited.
  Stopped,
}

impl WorkerState {
  fn from_u8(v: u8) -> Self {
    match v {
      0 => Self::Idle,
      1 => Self::Busy,
      2 => Self::BackingOff,
      _ => Self::Stopped,
    }
  }
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
  /// Current adaptive token budget.
  pub token_budget: usize,
  /// Time spent running batches.
  pub busy: Duration,
  /// Measured throughput, items per second (0 until it has run a batch).
  pub items_per_second: f64,
  /// Run time of its batches, seconds.
  pub inference: HistogramSnapshot,
  /// Items per batch.
  pub batch_size: HistogramSnapshot,
}

/// Counters and queue depth of the whole pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStats {
  /// Items accepted and not yet completed (queued or running).
  pub outstanding: usize,
  /// Items running now.
  pub in_flight: usize,
  /// Per worker.
  pub workers: Vec<WorkerStats>,
  /// Per item: admission to the start of its batch, seconds.
  pub queue_wait: HistogramSnapshot,
  /// Per request: tokenizing its texts, seconds.
  pub tokenize: HistogramSnapshot,
  /// Per request: `submit` to its answer, seconds.
  pub end_to_end: HistogramSnapshot,
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
  /// Padded tokens per second, as `f64` bits (0 = not measured yet): the fitted marginal
  /// speed once the cost model has one, a moving average before.
  token_speed: AtomicU64,
  /// When the batch running now started, nanoseconds after the pool's epoch.
  batch_started: AtomicU64,
  /// How long the worker expects that batch to take, nanoseconds (0 = no batch running, or no
  /// estimate yet).
  batch_expected: AtomicU64,
  histograms: WorkerHistograms,
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
  /// Where admitted items wait.
  queues: Queues,
  /// Time zero of the workers' timestamps.
  epoch: Instant,
  histograms: Arc<PoolHistograms>,
  /// Steal ends of every worker's deque.
  stealers: Vec<Stealer<Queued>>,
  /// Park/wake protocol.
  sleep: Sleep,
  /// `OPEN`, `DRAIN` or `CANCEL`.
  closing: AtomicU8,
  /// Items (and tokens) accepted and not yet completed (decremented by `Queued::drop`).
  outstanding: Arc<Outstanding>,
  /// Items running now.
  in_flight: AtomicUsize,
  /// Tokens running now.
  in_flight_tokens: AtomicUsize,
  /// Admission order.
  next_seq: AtomicU64,
  /// Per-worker counters.
  workers: Vec<WorkerShared>,
  /// Worker threads, to unpark them from a back-off when the pool closes.
  threads: Mutex<Vec<Thread>>,
  config: PoolConfig,
}

impl Registry {
  fn closing(&self) -> u8 {
    // SeqCst with the `outstanding` reservation in `submit`: see the comment there.
    self.closing.load(Ordering::SeqCst)
  }

  fn push(&self, item: Queued) {
    self.queues.push(item);
  }

  fn nanos_since_epoch(&self) -> u64 {
    u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
  }
}

/// A pool of worker threads that batch items across requests.
pub struct Pool {
  registry: Arc<Registry>,
  tokenizer: Arc<dyn Tokenize>,
  dimension: usize,
  handles: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Pool")
      .field("dimension", &self.dimension)
      .field("stats", &self.stats())
      .finish_non_exhaustive()
  }
}

impl Pool {
  /// Starts `config.workers` threads, each building its backend with `factory`, and waits until
  /// all are ready. If any backend fails to build, every thread is stopped and the first error
  /// returned.
  pub fn new(
    config: &PoolConfig,
    tokenizer: Arc<dyn Tokenize>,
    factory: BackendFactory,
  ) -> Result<Self, BackendError> {
    assert!(config.workers > 0, "a pool needs at least one worker");
    let deques: Vec<Worker<Queued>> = (0..config.workers).map(|_| Worker::new_fifo()).collect();
    let registry = Arc::new(Registry {
      queues: Queues::default(),
      epoch: Instant::now(),
      histograms: Arc::default(),
      stealers: deques.iter().map(Worker::stealer).collect(),
      sleep: Sleep::default(),
      closing: AtomicU8::new(OPEN),
      outstanding: Arc::new(Outstanding::default()),
      in_flight: AtomicUsize::new(0),
      in_flight_tokens: AtomicUsize::new(0),
      next_seq: AtomicU64::new(0),
      workers: (0..config.workers).map(|_| WorkerShared::default()).collect(),
      threads: Mutex::new(Vec::new()),
      config: config.clone(),
    });
    let factory = Arc::new(factory);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, BackendError>>();
    let mut handles = Vec::with_capacity(config.workers);
    for (index, deque) in deques.into_iter().enumerate() {
      let worker_registry = Arc::clone(&registry);
      let factory = Arc::clone(&factory);
      let ready = ready_tx.clone();
      let spawned =
        std::thread::Builder::new().name(format!("inferpool-worker-{index}")).spawn(move || {
          let built = catch_unwind(AssertUnwindSafe(|| factory(index))).unwrap_or_else(|panic| {
            Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
          });
          match built {
            Ok(backend) => {
              let _ = ready.send(Ok(backend.dimension()));
              drop(ready);
              WorkerThread::new(index, worker_registry, deque, backend).run();
            }
            Err(error) => {
              worker_registry.workers[index]
                .state
                .store(WorkerState::Stopped as u8, Ordering::Relaxed);
              let _ = ready.send(Err(error));
            }
          }
        });
      match spawned {
        Ok(handle) => {
          registry
            .threads
            .lock()
            .expect("thread list lock poisoned. This is a bug.")
            .push(handle.thread().clone());
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

    let mut dimension = None;
    let mut failure = None;
    for result in ready_rx.iter().take(config.workers) {
      match result {
        Ok(dim) if dimension.is_none_or(|d| d == dim) => dimension = Some(dim),
        Ok(dim) => {
          failure.get_or_insert(BackendError::new(
            BackendErrorKind::Model,
            format!(
              "workers disagree on the output dimension ({} vs {dim})",
              dimension.unwrap_or_default()
            ),
          ));
        }
        Err(error) => {
          failure.get_or_insert(error);
        }
      }
    }
    let pool = Self {
      registry,
      tokenizer,
      dimension: dimension.unwrap_or_default(),
      handles: Mutex::new(handles),
    };
    if let Some(error) = failure {
      pool.close(CloseMode::Cancel);
      return Err(error);
    }
    Ok(pool)
  }

  /// Width of every result row.
  #[must_use]
  pub fn dimension(&self) -> usize {
    self.dimension
  }

  /// Tokenizes `texts` on the calling thread and queues them as one request. `reply` is called
  /// exactly once, from a worker thread (or this one), with `texts.len() × dimension` values in
  /// input order, or with the first error. When `submit` itself returns an error, `reply` is
  /// never called.
  pub fn submit(
    &self,
    texts: &[String],
    options: SubmitOptions,
    reply: Reply,
  ) -> Result<Ticket, PoolError> {
    let registry = &self.registry;
    let (histograms, submitted) = (Arc::clone(&registry.histograms), Instant::now());
    let reply: Reply = Box::new(move |result| {
      histograms.end_to_end.record_duration(submitted.elapsed());
      reply(result);
    });
    let request = Arc::new(Request::new(texts.len(), self.dimension, options, reply));
    let ticket = Ticket { request: Arc::clone(&request) };
    // Reserve the places before looking at `closing` (both SeqCst): a drain that starts after
    // this check then sees the reservation and keeps its workers until these items are done.
    let before = registry.outstanding.items.fetch_add(texts.len(), Ordering::SeqCst);
    let release = |registry: &Registry| {
      registry.outstanding.items.fetch_sub(texts.len(), Ordering::SeqCst);
      request.forget_reply();
      // A draining worker may be waiting for the count to reach zero.
      registry.sleep.notify(Wake::All);
    };
    if registry.closing() != OPEN {
      release(registry);
      return Err(PoolError::Closed);
    }
    if texts.is_empty() {
      request.complete_empty();
      return Ok(ticket);
    }
    let limit = registry.config.max_queued_items;
    if before + texts.len() > limit {
      release(registry);
      return Err(PoolError::Overloaded { queued: before, requested: texts.len(), limit });
    }
    let tokenizing = Instant::now();
    let encoded = self.tokenizer.encode(texts);
    registry.histograms.tokenize.record_duration(tokenizing.elapsed());
    let encoded = match encoded {
      Ok(encoded) if encoded.len() == texts.len() => encoded,
      Ok(encoded) => {
        release(registry);
        return Err(PoolError::Backend(BackendError::new(
          BackendErrorKind::Model,
          format!("the tokenizer returned {} encodings for {} texts", encoded.len(), texts.len()),
        )));
      }
      Err(error) => {
        release(registry);
        return Err(error.into());
      }
    };
    let now = Instant::now();
    let tokens: usize = encoded.iter().map(|t| t.len().max(1)).sum();
    registry.outstanding.tokens.fetch_add(tokens, Ordering::Relaxed);
    let first = registry.next_seq.fetch_add(texts.len() as u64, Ordering::Relaxed);
    for (index, input) in encoded.into_iter().enumerate() {
      registry.push(Queued {
        request: Arc::clone(&request),
        index,
        input,
        seq: first + index as u64,
        admitted_at: now,
        attempts: 0,
        outstanding: Arc::clone(&registry.outstanding),
      });
    }
    registry.sleep.notify(if texts.len() > 1 { Wake::All } else { Wake::One });
    // A close that raced with this submit may have missed these items: settle them here.
    if registry.closing() == CANCEL {
      drain_injectors(registry);
    }
    Ok(ticket)
  }

  /// Counters and queue depth now.
  #[must_use]
  pub fn stats(&self) -> PoolStats {
    let r = &self.registry;
    PoolStats {
      outstanding: r.outstanding.items.load(Ordering::Relaxed),
      in_flight: r.in_flight.load(Ordering::Relaxed),
      workers: r
        .workers
        .iter()
        .map(|w| WorkerStats {
          state: WorkerState::from_u8(w.state.load(Ordering::Relaxed)),
          items: w.items.load(Ordering::Relaxed),
          batches: w.batches.load(Ordering::Relaxed),
          errors: w.errors.load(Ordering::Relaxed),
          steals: w.steals.load(Ordering::Relaxed),
          token_budget: w.token_budget.load(Ordering::Relaxed),
          busy: Duration::from_nanos(w.busy_nanos.load(Ordering::Relaxed)),
          items_per_second: f64::from_bits(w.speed.load(Ordering::Relaxed)),
          inference: w.histograms.inference.snapshot(),
          batch_size: w.histograms.batch_size.snapshot(),
        })
        .collect(),
      queue_wait: r.histograms.queue_wait.snapshot(),
      tokenize: r.histograms.tokenize.snapshot(),
      end_to_end: r.histograms.end_to_end.snapshot(),
    }
  }

  /// Stops admission, drains or cancels what is queued, and joins every worker thread. Calling
  /// it again is harmless; a cancel after a drain turns the drain into a cancel.
  pub fn close(&self, mode: CloseMode) {
    let registry = &self.registry;
    let target = if mode == CloseMode::Cancel { CANCEL } else { DRAIN };
    registry.closing.fetch_max(target, Ordering::SeqCst);
    if target == CANCEL {
      drain_injectors(registry);
    }
    registry.sleep.notify(Wake::All);
    for thread in registry.threads.lock().expect("thread list lock poisoned. This is a bug.").iter()
    {
      thread.unpark();
    }
    let handles =
      std::mem::take(&mut *self.handles.lock().expect("thread list lock poisoned. This is a bug."));
    for handle in handles {
      // Workers run backends under `catch_unwind`; a join error would repeat a panic that was
      // already reported to the callers of that batch.
      let _ = handle.join();
    }
  }
}

impl Drop for Pool {
  fn drop(&mut self) {
    self.close(CloseMode::Cancel);
  }
}

/// Fails every item in the injectors with `Closed`.
fn drain_injectors(registry: &Registry) {
  registry.queues.drain(|item| item.request.fail(PoolError::Closed));
}

/// One worker's private state (rayon's `WorkerThread`).
struct WorkerThread {
  index: usize,
  registry: Arc<Registry>,
  deque: Worker<Queued>,
  backend: Box<dyn Backend>,
  controller: Controller,
  /// Batches taken so far (drives the fairness tick).
  tick: u64,
  /// Consecutive failed batches (drives the back-off).
  failures: u32,
  /// xorshift state for choosing steal victims.
  rng: u64,
  /// The bulk length class this worker's sweep takes from next.
  cursor: usize,
  /// Reused output buffer.
  out: Vec<f32>,
}

impl WorkerThread {
  fn new(
    index: usize,
    registry: Arc<Registry>,
    deque: Worker<Queued>,
    backend: Box<dyn Backend>,
  ) -> Self {
    let controller =
      Controller::new(registry.config.adaptive, registry.config.policy.max_batch_tokens);
    registry.workers[index].token_budget.store(controller.budget(), Ordering::Relaxed);
    Self {
      index,
      registry,
      deque,
      backend,
      controller,
      tick: 0,
      failures: 0,
      rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1),
      cursor: CLASSES - 1,
      out: Vec::new(),
    }
  }

  fn shared(&self) -> &WorkerShared {
    &self.registry.workers[self.index]
  }

  fn set_state(&self, state: WorkerState) {
    self.shared().state.store(state as u8, Ordering::Relaxed);
  }

  fn run(mut self) {
    loop {
      let mode = self.registry.closing();
      if mode == CANCEL {
        self.cancel_local();
        drain_injectors(&self.registry);
        break;
      }
      let seen = self.registry.sleep.epoch();
      if let Some(found) = self.find_work() {
        self.run_batch(found);
        continue;
      }
      // SeqCst with the reservation in `submit` and the decrement in `Queued::drop`: zero means
      // every accepted item has been settled and no submit can still add one.
      if mode == DRAIN && self.registry.outstanding.items.load(Ordering::SeqCst) == 0 {
        break;
      }
      self.set_state(WorkerState::Idle);
      self.registry.sleep.sleep(seen);
    }
    self.set_state(WorkerState::Stopped);
    // Others may be waiting for the last item or for the close to be noticed.
    self.registry.sleep.notify(Wake::All);
  }

  fn cancel_local(&self) {
    while let Some(item) = self.deque.pop() {
      item.request.fail(PoolError::Closed);
    }
  }

  fn next_random(&mut self) -> u64 {
    self.rng ^= self.rng << 13;
    self.rng ^= self.rng >> 7;
    self.rng ^= self.rng << 17;
    self.rng
  }

  /// This worker's share of the queued tokens ([`fair_share`]): what it should take so that it
  /// finishes with every other worker, given their measured speeds and the batches they are
  /// running. A worker not measured yet counts at the mean of the measured ones; when none is
  /// measured, all count as equal and free.
  fn share(&self) -> usize {
    let r = &self.registry;
    let queued = r
      .outstanding
      .tokens
      .load(Ordering::Relaxed)
      .saturating_sub(r.in_flight_tokens.load(Ordering::Relaxed));
    let queued_items = r
      .outstanding
      .items
      .load(Ordering::Relaxed)
      .saturating_sub(r.in_flight.load(Ordering::Relaxed));
    let speed_of = |w: &WorkerShared| f64::from_bits(w.token_speed.load(Ordering::Relaxed));
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
      let state = WorkerState::from_u8(w.state.load(Ordering::Relaxed));
      if index == self.index || matches!(state, WorkerState::BackingOff | WorkerState::Stopped) {
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

  /// Looks for the next batch (module docs, steps 2–4). `None` when nothing is runnable
  /// anywhere. The flag tells whether the adaptive token budget bounded the batch.
  fn find_work(&mut self) -> Option<(Vec<Queued>, bool)> {
    let policy = self.registry.config.policy;
    let share = self.share();
    let cap = policy.max_batch_size.max(1);
    let mut budget = self.controller.budget().min(share);
    if self.shared().token_speed.load(Ordering::Relaxed) == 0 {
      // Speed not measured yet: a first, smaller batch measures it without handing a slow
      // device a large part of the queue.
      budget = budget.div_ceil(FIRST_BATCH_DIVISOR);
    }
    let adaptive_bound = budget >= self.controller.budget();
    self.tick += 1;
    let bulk_first = self.tick.is_multiple_of(FAIRNESS_INTERVAL);
    let mut held = false;
    loop {
      let mut candidates = self.gather(cap, budget, bulk_first);
      if candidates.is_empty() {
        return None;
      }
      let now = Instant::now();
      candidates.retain(|item| runnable(item, now));
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
            self.deque.push(item);
          }
          self.registry.sleep.sleep_for(seen, policy.max_wait.saturating_sub(waited));
          continue;
        }
      }
      let mut selection =
        select(candidates, cap, budget, policy.max_padding, self.controller.cost_model());
      // The rest goes back in length order: a thief takes from the front, so what it steals is a
      // run of similar lengths that batches with little padding.
      selection.rest.sort_by_key(Queued::len);
      for item in selection.rest {
        self.deque.push(item);
      }
      if !self.deque.is_empty() || !self.registry.queues.is_empty() {
        // Work is left: let an idle worker have it.
        self.registry.sleep.notify(Wake::One);
      }
      return Some((selection.batch, selection.budget_bound && adaptive_bound));
    }
  }

  /// Collects candidates: interactive items first (unless it is bulk's turn), else what the
  /// local deque holds, topped up from the bulk length classes to `cap` items and `budget`
  /// tokens, else a steal.
  fn gather(&mut self, cap: usize, budget: usize, bulk_first: bool) -> Vec<Queued> {
    let window = self.registry.config.policy.window.max(cap);
    let mut candidates = Vec::new();
    if !bulk_first {
      self.registry.queues.take_interactive(cap, &mut candidates);
      if !candidates.is_empty() {
        return candidates;
      }
    }
    self.pop_into(&mut candidates, window);
    let held: usize = candidates.iter().map(Queued::len).sum();
    if candidates.len() < cap && held < budget {
      self.registry.queues.refill(
        &self.deque,
        &mut self.cursor,
        cap - candidates.len(),
        budget - held,
      );
      self.pop_into(&mut candidates, window);
    }
    if candidates.is_empty() {
      self.steal();
      self.pop_into(&mut candidates, window);
    }
    if candidates.is_empty() && bulk_first {
      self.registry.queues.take_interactive(cap, &mut candidates);
    }
    candidates
  }

  /// Moves items from the local deque into `out` until it holds `window`.
  fn pop_into(&self, out: &mut Vec<Queued>, window: usize) {
    while out.len() < window {
      let Some(item) = self.deque.pop() else { break };
      out.push(item);
    }
  }

  /// Steals a batch from random victims into the local deque (crossbeam's `find_task` shape:
  /// loop only while some victim answered `Retry`).
  fn steal(&mut self) {
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
        match self.registry.stealers[victim].steal_batch(&self.deque) {
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

  /// Runs one batch and settles every item in it (module docs, step 5).
  fn run_batch(&mut self, (batch, budget_bound): (Vec<Queued>, bool)) {
    let registry = Arc::clone(&self.registry);
    let dimension = self.backend.dimension();
    let count = batch.len();
    let padded = batch.iter().map(Queued::len).max().unwrap_or(0) * count;
    let real: usize = batch.iter().map(Queued::len).sum();
    registry.in_flight.fetch_add(count, Ordering::Relaxed);
    registry.in_flight_tokens.fetch_add(real, Ordering::Relaxed);
    self.set_state(WorkerState::Busy);
    let shared = &registry.workers[self.index];
    shared.batch_expected.store(self.predict(padded), Ordering::Relaxed);
    shared.batch_started.store(registry.nanos_since_epoch(), Ordering::Relaxed);
    self.out.clear();
    self.out.resize(count * dimension, 0.0);
    let started = Instant::now();
    for item in &batch {
      registry
        .histograms
        .queue_wait
        .record_duration(started.saturating_duration_since(item.admitted_at));
    }
    let result = {
      let inputs: Vec<&crate::TokenizedText> = batch.iter().map(|q| &q.input).collect();
      let (backend, out) = (&mut self.backend, &mut self.out);
      catch_unwind(AssertUnwindSafe(|| backend.run(&inputs, out))).unwrap_or_else(|panic| {
        Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
      })
    };
    let elapsed = started.elapsed();
    shared.batch_expected.store(0, Ordering::Relaxed);
    shared.batches.fetch_add(1, Ordering::Relaxed);
    shared.histograms.inference.record_duration(elapsed);
    shared.histograms.batch_size.record_count(count);
    shared
      .busy_nanos
      .fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    match result {
      Ok(()) => {
        self.failures = 0;
        shared.items.fetch_add(count as u64, Ordering::Relaxed);
        self.controller.observe(padded, elapsed, budget_bound);
        self.record_speed(count, padded, elapsed);
        registry.in_flight.fetch_sub(count, Ordering::Relaxed);
        registry.in_flight_tokens.fetch_sub(real, Ordering::Relaxed);
        for (item, row) in batch.into_iter().zip(self.out.chunks_exact(dimension.max(1))) {
          // Settle the item (it leaves `outstanding`) before its request may be answered, so a
          // caller that gets its answer never sees its own items still counted.
          let (request, index) = (Arc::clone(&item.request), item.index);
          drop(item);
          request.complete_row(index, row);
        }
      }
      Err(error) => {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        registry.in_flight.fetch_sub(count, Ordering::Relaxed);
        registry.in_flight_tokens.fetch_sub(real, Ordering::Relaxed);
        self.settle_failure(batch, &error, padded);
      }
    }
    shared.token_budget.store(self.controller.budget(), Ordering::Relaxed);
  }

  /// Expected nanoseconds of a batch of `padded` tokens on this worker, from its fitted cost
  /// model (0 before it has one: a speed averaged over a few small batches overestimates).
  #[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "token counts and nanoseconds of one batch"
  )]
  fn predict(&self, padded: usize) -> u64 {
    self
      .controller
      .cost_model()
      .map_or(0, |cost| ((cost.fixed + cost.per_token * padded as f64) * 1e9) as u64)
  }

  /// Folds one batch into the worker's measured speeds (moving averages; the token speed is the
  /// fitted marginal speed when the cost model has one).
  fn record_speed(&self, items: usize, padded: usize, elapsed: Duration) {
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
    if let Some(cost) = self.controller.cost_model() {
      self.shared().token_speed.store((1.0 / cost.per_token).to_bits(), Ordering::Relaxed);
    } else {
      fold(&self.shared().token_speed, padded.max(1));
    }
  }

  /// Failure semantics (module docs, step 5).
  fn settle_failure(&mut self, batch: Vec<Queued>, error: &BackendError, padded: usize) {
    let registry = Arc::clone(&self.registry);
    let cancelling = registry.closing() == CANCEL;
    match error.kind {
      BackendErrorKind::OutOfMemory if batch.len() > 1 && !cancelling => {
        // Smaller batches may fit: halve the budget for good and run the items again.
        self.controller.out_of_memory(padded);
        for item in batch {
          self.deque.push(item);
        }
      }
      BackendErrorKind::InvalidInput => {
        for item in batch {
          item.request.fail(PoolError::Backend(error.clone()));
        }
      }
      _ => {
        let max_attempts = registry.config.max_attempts.max(1);
        let mut requeued = false;
        for mut item in batch {
          item.attempts += 1;
          if item.attempts >= max_attempts || cancelling || item.request.is_finished() {
            item.request.fail(if cancelling {
              PoolError::Closed
            } else {
              PoolError::Backend(error.clone())
            });
          } else {
            registry.push(item);
            requeued = true;
          }
        }
        if requeued {
          registry.sleep.notify(Wake::All);
        }
        self.failures += 1;
        self.back_off();
      }
    }
  }

  /// Pauses after consecutive failures: `backoff_initial × 2^(failures-1)`, at most
  /// `backoff_max`; cut short when the pool closes.
  fn back_off(&self) {
    let config = &self.registry.config;
    let exponent = self.failures.saturating_sub(1).min(20);
    let pause = config.backoff_initial.saturating_mul(1 << exponent).min(config.backoff_max);
    if pause.is_zero() {
      return;
    }
    self.set_state(WorkerState::BackingOff);
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

/// Whether `item` should still run; settles it (and drops it) when not.
fn runnable(item: &Queued, now: Instant) -> bool {
  if item.request.is_finished() {
    return false;
  }
  if item.request.deadline.is_some_and(|deadline| deadline <= now) {
    item.request.fail(PoolError::Timeout);
    return false;
  }
  true
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
  let detail = panic
    .downcast_ref::<&str>()
    .map(ToString::to_string)
    .or_else(|| panic.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "unknown payload".to_owned());
  format!("the backend panicked: {detail}")
}
