//! What a worker holds: loading (with eviction under its memory budget and the switch cap),
//! unloading, idle unloads.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
  },
  time::{Duration, Instant},
};

use crate::{
  Backend, BackendError, BackendErrorKind, Event, PoolError, UnloadReason, WorkerState,
  batch::Queued,
  models::{
    Usage,
    decisions::{self, Refusal, Resident},
  },
  scheduler::{
    execute::panic_message,
    registry::DRAIN,
    sleep::Wake,
    worker::{WorkerThread, runnable},
  },
};

/// A model a worker holds.
pub(crate) struct Slot {
  pub(crate) backend: Box<dyn Backend>,
  pub(crate) usage: Usage,
  pub(crate) last_used: Instant,
  pub(crate) loaded_at: Instant,
}

/// A worker's claim on loading a model: counted in the model's `loading` until dropped.
pub(crate) struct Claim<'a>(&'a AtomicUsize);

impl<'a> Claim<'a> {
  /// The claim, and how many other workers held one when it was taken.
  pub(crate) fn take(loading: &'a AtomicUsize) -> (Self, usize) {
    let before = loading.fetch_add(1, Ordering::SeqCst);
    (Self(loading), before)
  }
}

impl Drop for Claim<'_> {
  fn drop(&mut self) {
    self.0.fetch_sub(1, Ordering::SeqCst);
  }
}

/// How long a worker that had no room for a model waits before it considers it again.
pub(crate) const REFUSED_PAUSE: Duration = Duration::from_millis(100);

/// The window of `max_switches_per_hour`.
pub(crate) const HOUR: Duration = Duration::from_secs(3600);

impl WorkerThread {
  /// Whether one more switch fits under `max_switches_per_hour` (always while draining).
  pub(crate) fn may_switch(&mut self, now: Instant) -> bool {
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
  pub(crate) fn load_claimed(&mut self, model: usize) -> Result<(), PoolError> {
    let registry = Arc::clone(&self.registry);
    let (_claim, _) = Claim::take(&registry.models[model].loading);
    self.load(model, false)
  }

  /// What `model` would evict here (lowest priority first, then lowest usage score), or why it
  /// cannot load. A model of higher priority is evicted only `on_demand`, when it has no queued
  /// work and `model`'s work has waited `switch_delay`: priority decides who waits while the
  /// devices are contended, it does not keep a model out for good.
  pub(crate) fn victims(
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
    let held: Vec<Resident> = (0..self.models.len())
      .filter_map(|m| {
        let slot = self.models[m].slot.as_ref()?;
        let config = &registry.models[m].config;
        // A model with rows decoding here is not evicted: it outranks every load.
        let decoding = !self.models[m].cohorts.is_empty();
        Some(Resident {
          model: m,
          priority: if decoding { i32::MAX } else { config.priority },
          score: slot.usage.score(now),
          memory: config.memory,
          queued: registry.models[m].queued_items() + usize::from(decoding),
        })
      })
      .collect();
    let waited = Duration::from_nanos(
      registry.nanos_since_epoch().saturating_sub(shared.served_at.load(Ordering::Relaxed)),
    );
    let may_evict_higher = on_demand && waited >= registry.config.switch_delay;
    let used = self.shared().memory_used.load(Ordering::Relaxed);
    let victims = decisions::victims(&held, need, priority, budget, used, may_evict_higher)
      .map_err(|refusal| {
        PoolError::Unavailable(match refusal {
          Refusal::TooLarge => format!(
            "model {name:?} needs {need} bytes, more than worker {}'s memory budget of {budget}",
            self.index
          ),
          Refusal::Outranked { by, busy } => format!(
            "model {name:?} fits on worker {} only by evicting {:?}, which has a higher priority{}",
            self.index,
            registry.models[by].config.name,
            if busy { " and queued work" } else { "" },
          ),
        })
      })?;
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
  pub(crate) fn build(&self, model: usize) -> Result<Box<dyn Backend>, BackendError> {
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
  pub(crate) fn install(&mut self, model: usize, backend: Box<dyn Backend>, started: Instant) {
    let registry = Arc::clone(&self.registry);
    let shared = &registry.models[model];
    let loaded_at = Instant::now();
    self.shared().place(backend.placement());
    self.models[model].slot =
      Some(Slot { backend, usage: Usage::new(loaded_at), last_used: loaded_at, loaded_at });
    let worker = self.shared();
    worker.loaded.fetch_or(1 << model, Ordering::Relaxed);
    worker.memory_used.fetch_add(shared.config.memory, Ordering::Relaxed);
    worker.loads.fetch_add(1, Ordering::Relaxed);
    shared.loads.fetch_add(1, Ordering::Relaxed);
    self.models[model].load_failure = (0, None);
    registry.emit(Event::ModelLoaded { model, worker: self.index, took: started.elapsed() });
    // Workers waiting for this model may now steal from this one.
    registry.sleep.notify(Wake::All);
  }

  /// Loads `model` here, evicting what no longer fits ([`WorkerThread::victims`]). The caller
  /// holds a [`Claim`] on the model while it loads. A load that fails after evicting loads the
  /// evicted models again, and only a load that succeeds counts as a switch.
  pub(crate) fn load(&mut self, model: usize, on_demand: bool) -> Result<(), PoolError> {
    if self.models[model].slot.is_some() {
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
        let failures = self.models[model].load_failure.0 + 1;
        let pause = self.registry.config.backoff(failures);
        self.models[model].load_failure = (failures, Some(Instant::now() + pause));
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
  pub(crate) fn unload(&mut self, model: usize, reason: UnloadReason) -> bool {
    if self.models[model].slot.is_none() {
      return false;
    }
    self.requeue_cohorts(model);
    let Some(slot) = self.models[model].slot.take() else { return false };
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
    while let Some(item) = self.models[model].deque.pop() {
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
  pub(crate) fn unload_idle(&mut self) -> Option<Duration> {
    let timeout = self.registry.config.idle_timeout?;
    let now = Instant::now();
    let mut next: Option<Duration> = None;
    for model in 0..self.models.len() {
      let Some(slot) = &self.models[model].slot else { continue };
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
  pub(crate) fn purge(&self, model: usize) {
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
  pub(crate) fn fail_model(&self, model: usize, error: &BackendError) {
    let fail = |item: Queued| item.request.fail(PoolError::Backend(error.clone()));
    self.registry.models[model].queues.drain(fail);
    while let Some(item) = self.models[model].deque.pop() {
      fail(item);
    }
  }
}
