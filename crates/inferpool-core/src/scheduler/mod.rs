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
//!    no longer fits its memory budget, [`crate::models`]) only when that is justified: it has
//!    nothing else to do and the model is loaded nowhere or has more work than its holders take
//!    in a batch; or the model outranks what it runs; or, at equal priority, the model has been
//!    unserved for `switch_delay` while loaded nowhere. Loads that evict are capped by
//!    `max_switches_per_hour`.
//! 3. It works out its *share* of that model's queued tokens ([`fair_share`]): enough to finish
//!    together with every other worker holding the model, given their measured speeds and the
//!    batches they are running. Its token budget for the batch is the smaller of that share and
//!    its token budget for the model (`batch::budget`).
//! 4. It looks for work in this order ([`WorkerThread::find_batch`]): interactive items (unless
//!    the fairness tick says bulk goes first this time), then its own deque for the model, topped
//!    up from the bulk length classes (a sweep downwards from its cursor) to the budget, then a
//!    batch stolen from a random other worker's deque for the model.
//! 5. It cuts a batch from what it holds ([`select`]): length-sorted, the most urgent item
//!    included, capped by `max_batch_size`, the budget and the padding bound. The rest goes back
//!    to its deque in length order, where idle workers can steal it.
//! 6. The batch runs outside every lock, under `catch_unwind`; one that starts while every other
//!    worker is idle and nothing is queued may be spread over their cores, which then start no
//!    batch until it ends ([`spread`]). Rows go to their requests by index. On failure:
//!    out-of-memory halves the budget and requeues the items; invalid input fails their requests;
//!    any other error (or a panic) requeues the items for another worker up to `max_attempts`,
//!    and the worker backs off exponentially until it succeeds again.
//! 7. Items of answered requests (failed, cancelled) and items past their deadline are dropped
//!    when a worker meets them; they never run. A worker that unloads a model first moves its
//!    deque for that model back to the injectors, so no item is lost or run twice.
//! 8. `close` stops admission; in drain mode workers run until no item is outstanding (the switch
//!    cap no longer applies), in cancel mode every queued item fails with `Closed`. It returns
//!    once every thread has exited.

use std::{
  sync::{
    Arc, Condvar, Mutex, OnceLock,
    atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    mpsc,
  },
  thread::JoinHandle,
  time::Instant,
};

use crossbeam_deque::Worker;

use crate::{
  BackendError, BackendErrorKind, BackendFactory, CloseMode, ModelConfig, Models, PoolConfig,
  PoolError, PoolStats, Tokenize,
  batch::{Outstanding, Queued, queue::Queues},
  generation::cohort::GenerationShared,
  metrics::PoolHistograms,
  request::Request,
  scheduler::{
    admission::Admission,
    registry::{
      CANCEL, Command, DRAIN, ModelShared, OPEN, Registry, WorkerShared, drain_injectors, lock,
    },
    sleep::{Sleep, Wake},
    startup::{ExitGuard, orphaned_model, start_worker, validate},
    worker::WorkerThread,
  },
};

pub(crate) mod admission;
pub(crate) mod decode;
pub(crate) mod execute;
pub(crate) mod registry;
pub(crate) mod sleep;
pub(crate) mod spread;
pub(crate) mod startup;
mod submit;
mod tokenize;
pub(crate) mod worker;

/// A cancellation handle for one submitted request.
#[derive(Clone, Debug)]
pub struct Ticket {
  pub(crate) request: Arc<Request>,
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
          generation: GenerationShared::default(),
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
      spread: spread::Spread::default(),
      closing: AtomicU8::new(OPEN),
      outstanding,
      next_seq: AtomicU64::new(0),
      turns: AtomicU64::new(0),
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

  /// A place in line for a request about to be submitted ([`crate::SubmitOptions::turn`]): with
  /// `wait_when_full`, requests are admitted in the order of their turns. Take it where the
  /// caller's order is known (the caller's thread) when the submit itself runs elsewhere.
  #[must_use]
  pub fn next_turn(&self) -> u64 {
    self.registry.turns.fetch_add(1, Ordering::Relaxed)
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
    self.registry.stats()
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
