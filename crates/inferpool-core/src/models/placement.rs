//! Which model a worker runs next, and whether it loads one: the worker takes a snapshot
//! ([`ModelView`]s) and acts on the decisions of [`crate::models::decisions`].

use std::{
  sync::{Arc, atomic::Ordering},
  time::{Duration, Instant},
};

use crate::{
  PoolError,
  models::{
    decisions::{ModelView, load_justified, rank},
    residency::{Claim, REFUSED_PAUSE},
  },
  scheduler::{sleep::Wake, worker::WorkerThread},
};

impl WorkerThread {
  /// What this worker sees of `model` now.
  pub(crate) fn view(&self, model: usize) -> ModelView {
    let registry = &self.registry;
    let shared = &registry.models[model];
    let own = &self.models[model];
    let unserved =
      registry.nanos_since_epoch().saturating_sub(shared.served_at.load(Ordering::Relaxed));
    ModelView {
      priority: shared.config.priority,
      queued: shared.queued_items().max(usize::from(!own.deque.is_empty())),
      held: own.slot.is_some(),
      interactive: shared.queues.has_interactive(),
      unserved: Duration::from_nanos(unserved),
      holders: registry.holders(model) - usize::from(own.slot.is_some()),
      held_for: own.slot.as_ref().map_or(Duration::ZERO, |s| s.loaded_at.elapsed()),
    }
  }

  /// Whether loading `model` is justified now, with `loading` other workers loading it, while
  /// the worker could run `running` instead. The view is taken afresh: a load that another
  /// worker finished a moment ago counts.
  fn justified(&self, model: usize, loading: usize, running: Option<&ModelView>) -> bool {
    let view = self.view(model);
    let view = ModelView { holders: view.holders + loading, ..view };
    let config = &self.registry.config;
    load_justified(&view, running, config.policy.max_batch_size, config.switch_delay)
  }

  /// Which model to run next (module docs, step 2), loading it when that is justified. `skip`:
  /// models already found empty this round.
  pub(crate) fn choose_model(&mut self, skip: u64) -> Option<usize> {
    let registry = Arc::clone(&self.registry);
    let views: Vec<Option<ModelView>> = (0..registry.models.len())
      .map(|m| {
        let eligible = skip & (1 << m) == 0 && registry.models[m].config.allows(self.index);
        eligible.then(|| self.view(m))
      })
      .collect();
    let ranking = rank(&views);
    let running = ranking.current.and_then(|m| views[m]);
    self.retry_at = None;
    let instant = Instant::now();
    for model in ranking.candidates {
      let shared = &registry.models[model];
      if let Some(at) = self.models[model].load_failure.1.filter(|&at| instant < at) {
        // A load failed or was refused a moment ago: look again when the pause ends.
        self.retry_by(at);
        continue;
      }
      if !self.justified(model, shared.loading.load(Ordering::SeqCst), running.as_ref()) {
        continue;
      }
      // Claim the load and decide again with the claims taken before this one: of workers
      // deciding at the same moment, the first claim goes on and the others step back. A worker
      // only claims what it decided to load, so a claim never turns the others away for
      // nothing unless the load then fails, and then they are woken.
      let (claim, others_loading) = Claim::take(&shared.loading);
      if !self.justified(model, others_loading, running.as_ref()) {
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
    ranking.current
  }

  /// Makes the worker look at the models again by `at` at the latest.
  pub(crate) fn retry_by(&mut self, at: Instant) {
    self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
  }
}
