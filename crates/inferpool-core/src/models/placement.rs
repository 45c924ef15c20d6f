//! Which model a worker runs next, and whether loading one is justified.

use std::{
  sync::{Arc, atomic::Ordering},
  time::{Duration, Instant},
};

use crate::{
  PoolError,
  models::residency::{Claim, REFUSED_PAUSE},
  scheduler::{registry::ModelShared, sleep::Wake, worker::WorkerThread},
};

impl WorkerThread {
  /// Which model to run next (module docs, step 2), loading it when that is justified. `skip`:
  /// models already found empty this round.
  pub(crate) fn choose_model(&mut self, skip: u64) -> Option<usize> {
    let registry = Arc::clone(&self.registry);
    let now = registry.nanos_since_epoch();
    let unserved = |m: &ModelShared| now.saturating_sub(m.served_at.load(Ordering::Relaxed));
    let mut current: Option<(i32, bool, u64, usize)> = None;
    let mut others = Vec::new();
    for (model, shared) in registry.models.iter().enumerate() {
      if skip & (1 << model) != 0 || !shared.config.allows(self.index) {
        continue;
      }
      if shared.queued_items() == 0 && self.models[model].deque.is_empty() {
        continue;
      }
      if self.models[model].slot.is_some() {
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
      if let Some(at) = self.models[model].load_failure.1.filter(|&at| instant < at) {
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
        if shared.queued_items() == 0 && self.models[model].deque.is_empty() {
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
          self.models[model].load_failure.1 = Some(Instant::now() + pause);
        }
      }
      // Workers that stepped back for this claim look again; this one does when its pause ends
      // (to retry, or to drop calls answered meanwhile that no worker would meet).
      if let Some(at) = self.models[model].load_failure.1 {
        self.retry_by(at);
      }
      registry.sleep.notify(Wake::All);
    }
    current.map(|c| c.3)
  }

  /// Makes the worker look at the models again by `at` at the latest.
  pub(crate) fn retry_by(&mut self, at: Instant) {
    self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
  }

  /// Whether work queued for `model`, which this worker does not hold, justifies loading it
  /// while it could run `current` (priority, model) instead (module docs, step 2). `loading`:
  /// other workers loading it now.
  pub(crate) fn load_justified(
    &self,
    model: usize,
    loading: usize,
    current: Option<(i32, usize)>,
  ) -> bool {
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
          && self.models[running].slot.as_ref().is_some_and(|s| s.loaded_at.elapsed() >= delay)
      }
      // Idle, or the model outranks what it runs: load it unless its holders take its work.
      _ => holders == 0 || more_than_holders_take,
    }
  }
}
