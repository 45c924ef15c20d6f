//! What the workers and the pool handle share (rayon's `Registry`): the models' queues and
//! counters, the workers' lock-free views, the sleep state, the lifecycle flag and the waiting
//! requests.

use std::{
  sync::{
    Arc, Condvar, Mutex, OnceLock,
    atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    mpsc,
  },
  thread::Thread,
  time::Instant,
};

use crossbeam_deque::Stealer;

use crate::{
  Event, EventSink, ModelConfig, ModelFactory, Placement, PoolConfig, PoolError, WorkerState,
  batch::{Outstanding, Queued, queue::Queues},
  metrics::{PoolHistograms, WorkerHistograms},
  request::Request,
  scheduler::{
    admission::{Admission, Waiting},
    sleep::{Sleep, Wake},
  },
};

pub(crate) const OPEN: u8 = 0;
pub(crate) const DRAIN: u8 = 1;
pub(crate) const CANCEL: u8 = 2;

/// Shared, lock-free view of one model on one worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerModelShared {
  pub(crate) items: AtomicU64,
  pub(crate) batches: AtomicU64,
  /// Padded tokens per second, as `f64` bits (0 = not measured yet): the fitted marginal
  /// speed once the cost model has one, a moving average before.
  pub(crate) token_speed: AtomicU64,
  pub(crate) histograms: WorkerHistograms,
}

/// Shared, lock-free view of one worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerShared {
  pub(crate) state: AtomicU8,
  pub(crate) items: AtomicU64,
  pub(crate) batches: AtomicU64,
  pub(crate) errors: AtomicU64,
  pub(crate) steals: AtomicU64,
  /// Batches the backend spread over idle workers' cores ([`crate::Backend::run_alone`]).
  pub(crate) spread_batches: AtomicU64,
  pub(crate) token_budget: AtomicUsize,
  pub(crate) busy_nanos: AtomicU64,
  /// Items per second, as `f64` bits (0 = not measured yet).
  pub(crate) speed: AtomicU64,
  /// When the batch running now started, nanoseconds after the pool's epoch.
  pub(crate) batch_started: AtomicU64,
  /// How long the worker expects that batch to take, nanoseconds (0 = no batch running, or no
  /// estimate yet).
  pub(crate) batch_expected: AtomicU64,
  /// The models it holds, one bit per model index.
  pub(crate) loaded: AtomicU64,
  pub(crate) loads: AtomicU64,
  pub(crate) switches: AtomicU64,
  pub(crate) evictions: AtomicU64,
  pub(crate) memory_used: AtomicU64,
  /// Why its device could not start.
  pub(crate) failure: OnceLock<String>,
  /// What the backend it loaded last runs on ([`crate::Placement::provider`]); `None` before
  /// any load. Locked only by a load and by a stats read.
  pub(crate) provider: Mutex<Option<String>>,
  /// Why it runs elsewhere than its device was meant to: the first fallback a backend of it
  /// reported (it stays: later loads on the device it fell back to are still fallen back).
  pub(crate) fallback: OnceLock<String>,
  pub(crate) models: Box<[WorkerModelShared]>,
}

impl WorkerShared {
  pub(crate) fn new(models: usize) -> Self {
    Self { models: (0..models).map(|_| WorkerModelShared::default()).collect(), ..Self::default() }
  }

  pub(crate) fn holds(&self, model: usize) -> bool {
    self.loaded.load(Ordering::Relaxed) & (1 << model) != 0
  }

  pub(crate) fn state(&self) -> WorkerState {
    WorkerState::from_u8(self.state.load(Ordering::Relaxed))
  }

  /// Records where a backend it just loaded runs.
  pub(crate) fn place(&self, placement: Placement) {
    if let Some(reason) = placement.fallback {
      let _ = self.fallback.set(reason);
    }
    *lock(&self.provider) = Some(placement.provider);
  }

  /// What the backend it loaded last runs on.
  pub(crate) fn provider(&self) -> Option<String> {
    lock(&self.provider).clone()
  }
}

/// Shared state of one model.
pub(crate) struct ModelShared {
  pub(crate) config: ModelConfig,
  /// Where its admitted items wait.
  pub(crate) queues: Queues,
  /// Its items (and tokens) accepted and not yet completed; they count into the pool's.
  pub(crate) outstanding: Arc<Outstanding>,
  /// Its items running now.
  pub(crate) in_flight: AtomicUsize,
  /// Their tokens.
  pub(crate) in_flight_tokens: AtomicUsize,
  /// Width of its rows, set by the first load.
  pub(crate) dimension: OnceLock<usize>,
  pub(crate) histograms: PoolHistograms,
  /// Its cohorts, rows and tokens (a seq2seq model's).
  pub(crate) generation: crate::generation::cohort::GenerationShared,
  pub(crate) items: AtomicU64,
  /// When a batch of it last started, or its queue last filled from empty (nanoseconds after
  /// the epoch): how long its work has gone unserved.
  pub(crate) served_at: AtomicU64,
  /// Workers loading it now.
  pub(crate) loading: AtomicUsize,
  pub(crate) loads: AtomicU64,
  pub(crate) unloads: AtomicU64,
  pub(crate) evictions: AtomicU64,
}

impl ModelShared {
  pub(crate) fn queued_items(&self) -> usize {
    self
      .outstanding
      .items
      .load(Ordering::Relaxed)
      .saturating_sub(self.in_flight.load(Ordering::Relaxed))
  }
}

/// A request to one worker, handled between batches.
pub(crate) enum Command {
  Load { model: usize, done: mpsc::Sender<Result<(), PoolError>> },
  Unload { model: usize, done: mpsc::Sender<bool> },
}

/// What the workers and the pool handle share (rayon's `Registry`).
pub(crate) struct Registry {
  /// Per model.
  pub(crate) models: Vec<ModelShared>,
  /// Time zero of the workers' timestamps.
  pub(crate) epoch: Instant,
  /// Steal ends of every worker's deques, `[worker][model]`.
  pub(crate) stealers: Vec<Vec<Stealer<Queued>>>,
  /// Park/wake protocol.
  pub(crate) sleep: Sleep,
  /// The cores a spread batch holds ([`crate::Backend::run_alone`]).
  pub(crate) spread: super::spread::Spread,
  /// `OPEN`, `DRAIN` or `CANCEL`.
  pub(crate) closing: AtomicU8,
  /// Items (and tokens) accepted and not yet completed, over every model (decremented by
  /// `Queued::drop`).
  pub(crate) outstanding: Arc<Outstanding>,
  /// Admission order.
  pub(crate) next_seq: AtomicU64,
  /// The next request's place in line ([`crate::Pool::next_turn`]).
  pub(crate) turns: AtomicU64,
  /// Requests waiting for room (`wait_when_full`).
  pub(crate) admission: Admission,
  /// Per-worker counters.
  pub(crate) workers: Vec<WorkerShared>,
  /// Per-worker commands; `None` once the worker has exited.
  pub(crate) commands: Vec<Mutex<Option<Vec<Command>>>>,
  /// Worker threads, to unpark them from a back-off when the pool closes.
  pub(crate) threads: Mutex<Vec<Thread>>,
  /// Worker threads that have exited (every `close` waits for all of them).
  pub(crate) exited: Mutex<usize>,
  /// Signalled when `exited` grows.
  pub(crate) exited_changed: Condvar,
  pub(crate) factory: ModelFactory,
  pub(crate) events: Option<EventSink>,
  pub(crate) config: PoolConfig,
}

impl Registry {
  pub(crate) fn closing(&self) -> u8 {
    // SeqCst with the `outstanding` reservation in `submit`: see the comment there.
    self.closing.load(Ordering::SeqCst)
  }

  pub(crate) fn push(&self, item: Queued) {
    self.models[item.request.model].queues.push(item);
  }

  pub(crate) fn nanos_since_epoch(&self) -> u64 {
    u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
  }

  /// Queues the tokenized items of `request` (their places already reserved in the pool's
  /// outstanding count) and wakes workers.
  pub(crate) fn enqueue(
    &self,
    model: usize,
    request: &Arc<Request>,
    encoded: Vec<crate::TokenizedText>,
  ) {
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
    // As many workers as the new items make batches; each batch a worker takes wakes another
    // while work is left (`find_batch`).
    let batches = count.div_ceil(self.config.policy.max_batch_size.max(1));
    self.sleep.notify(Wake::Many { count: batches, prefer: self.holder_mask(model) });
    // A close that raced with this may have missed these items: settle them here.
    if self.closing() == CANCEL {
      drain_injectors(self);
    }
  }

  /// Admits the waiting requests that fit now, in order (a cancelling close fails them).
  pub(crate) fn admit_waiting(&self) {
    if self.admission.items.load(Ordering::SeqCst) == 0 {
      return;
    }
    let refuse = (self.closing() == CANCEL).then_some(PoolError::Closed);
    let admitted =
      self.admission.admit(&self.outstanding.items, self.config.max_queued_items, refuse.as_ref());
    for (request, error) in admitted.failed {
      request.fail(error);
    }
    for Waiting { request, model, items, .. } in admitted.calls {
      self.enqueue(model, &request, items);
    }
  }

  /// Workers holding `model` now.
  pub(crate) fn holders(&self, model: usize) -> usize {
    self.holder_mask(model).count_ones() as usize
  }

  /// The workers holding `model` now, one bit each (whom a single wake prefers).
  pub(crate) fn holder_mask(&self, model: usize) -> u64 {
    self.workers.iter().enumerate().filter(|(_, w)| w.holds(model)).fold(0, |m, (i, _)| m | 1 << i)
  }

  /// Why no worker can ever run `model`, if none can: every worker it may use failed, or has
  /// too little memory budget for it.
  pub(crate) fn unplaceable(&self, model: usize) -> Option<String> {
    let shared = &self.models[model];
    let usable =
      |w: usize| self.config.fits(&shared.config, w) && self.workers[w].failure.get().is_none();
    if (0..self.workers.len()).any(usable) {
      return None;
    }
    Some(format!(
      "model {:?} can run on no worker: the workers it may use failed or have less memory budget than its {} bytes",
      shared.config.name, shared.config.memory
    ))
  }

  pub(crate) fn emit(&self, event: Event) {
    if let Some(sink) = &self.events {
      sink(event);
    }
  }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  mutex.lock().expect("a pool lock was poisoned. This is a bug.")
}

/// Fails every item in the injectors with `Closed`.
pub(crate) fn drain_injectors(registry: &Registry) {
  for model in &registry.models {
    model.queues.drain(|item| item.request.fail(PoolError::Closed));
  }
}
