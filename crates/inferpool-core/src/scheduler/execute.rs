//! Running a batch on a worker's backend and settling every item in it: rows to their requests,
//! failures retried, isolated or reported.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
  },
  time::{Duration, Instant},
};

use crate::{
  BackendError, BackendErrorKind, Event, PoolError, WorkerState,
  batch::Queued,
  scheduler::{registry::CANCEL, sleep::Wake, worker::WorkerThread},
};

impl WorkerThread {
  /// Runs one batch of `model` and settles every item in it (module docs, step 6).
  pub(crate) fn run_batch(&mut self, (model, batch): (usize, Vec<Queued>)) {
    if self.registry.models[model].config.kind == crate::ModelKind::Seq2Seq {
      self.start_cohort(model, batch);
      return;
    }
    let registry = Arc::clone(&self.registry);
    let shared_model = &registry.models[model];
    let count = batch.len();
    let padded = batch.iter().map(Queued::len).max().unwrap_or(0) * count;
    let real: usize = batch.iter().map(Queued::len).sum();
    shared_model.in_flight.fetch_add(count, Ordering::Relaxed);
    shared_model.in_flight_tokens.fetch_add(real, Ordering::Relaxed);
    shared_model.served_at.store(registry.nanos_since_epoch(), Ordering::Relaxed);
    self.set_state(WorkerState::Busy);
    self.keep_off_spread_cores(model);
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
    let (result, spread) = self.execute(model, &batch);
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
        if spread {
          // Run with more threads than the worker has under load: not its speed.
          shared.spread_batches.fetch_add(1, Ordering::Relaxed);
        } else {
          self.models[model].budget.observe(padded, elapsed);
          self.record_speed(model, count, padded, elapsed);
        }
        self.complete(model, batch, finished);
      }
      Err(error) => {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        self.settle_failure(model, batch, &error, padded);
      }
    }
    shared.token_budget.store(self.models[model].budget.tokens(), Ordering::Relaxed);
  }

  /// Runs `batch` on this worker's backend of `model` (a panic becomes an error); on success
  /// its rows are in `self.out`. The flag tells whether the backend spread it over the cores of
  /// the other workers, which were all idle, with nothing queued, when it started
  /// ([`crate::Backend::run_alone`]); they start no batch until it ends (module `spread`).
  pub(crate) fn execute(
    &mut self,
    model: usize,
    batch: &[Queued],
  ) -> (Result<(), BackendError>, bool) {
    let registry = Arc::clone(&self.registry);
    let slot = self.models[model].slot.as_mut().expect("a batch runs on a loaded model");
    // Alone: the other workers are idle and nothing waits that they would start on at once.
    // What decides is read again once the cores are claimed (module `spread`); the first read
    // spares a busy pool the claim.
    let workers = &registry.workers;
    let alone = || {
      registry.models.iter().all(|m| m.queued_items() == 0)
        && workers.iter().enumerate().all(|(index, worker)| {
          index == self.index || !matches!(worker.state(), WorkerState::Busy | WorkerState::Loading)
        })
    };
    let claim = (workers.len() > 1 && slot.backend.can_spread() && alone())
      .then(|| registry.spread.claim())
      .flatten()
      .filter(|_| alone());
    let alone = claim.is_some();
    let dimension = slot.backend.dimension();
    self.out.clear();
    self.out.resize(batch.len() * dimension, 0.0);
    let inputs: Vec<&crate::TokenizedText> = batch.iter().map(|q| &q.input).collect();
    let (backend, out) = (&mut slot.backend, &mut self.out);
    let run = || {
      if alone {
        backend.run_alone(&inputs, out)
      } else {
        backend.run(&inputs, out).map(|()| false)
      }
    };
    let result = catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
      Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
    });
    drop(claim);
    slot.last_used = Instant::now();
    match result {
      Ok(spread) => (Ok(()), spread),
      Err(error) => (Err(error), false),
    }
  }

  /// Returns once no spread batch holds the cores `model`'s backend runs on (at once when it
  /// runs elsewhere). Call after the worker is marked busy: a batch that starts spreading from
  /// then on sees it (module `spread`); one that spreads already holds the cores until it ends.
  pub(crate) fn keep_off_spread_cores(&self, model: usize) {
    if self.models[model].slot.as_ref().is_some_and(|slot| slot.backend.shares_cores()) {
      self.registry.spread.wait();
    }
  }

  /// Hands the rows in `self.out` of a successful run of `batch` to their requests.
  pub(crate) fn complete(&mut self, model: usize, batch: Vec<Queued>, finished: Instant) {
    let registry = Arc::clone(&self.registry);
    let count = batch.len();
    let slot = self.models[model].slot.as_mut().expect("a batch runs on a loaded model");
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
  pub(crate) fn predict(&self, model: usize, padded: usize) -> u64 {
    self.models[model]
      .budget
      .cost_model()
      .map_or(0, |cost| ((cost.fixed + cost.per_token * padded as f64) * 1e9) as u64)
  }

  /// Folds one batch into the worker's measured speeds (moving averages; the token speed is the
  /// fitted marginal speed when the cost model has one).
  pub(crate) fn record_speed(&self, model: usize, items: usize, padded: usize, elapsed: Duration) {
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
    if let Some(cost) = self.models[model].budget.cost_model() {
      token_speed.store((1.0 / cost.per_token).to_bits(), Ordering::Relaxed);
    } else {
      fold(token_speed, padded.max(1));
    }
  }

  /// Failure semantics (module docs, step 6).
  pub(crate) fn settle_failure(
    &mut self,
    model: usize,
    batch: Vec<Queued>,
    error: &BackendError,
    padded: usize,
  ) {
    let cancelling = self.registry.closing() == CANCEL;
    if error.kind == BackendErrorKind::OutOfMemory && batch.len() > 1 && !cancelling {
      // Smaller batches may fit: halve the budget for good and run the items again.
      self.models[model].budget.out_of_memory(padded);
      for item in batch {
        self.models[model].deque.push(item);
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
  pub(crate) fn isolate(&mut self, model: usize, batch: Vec<Queued>, error: &BackendError) {
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
      match self.execute(model, &part).0 {
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
  pub(crate) fn retry_or_fail(&self, mut item: Queued, error: &BackendError, cancelling: bool) {
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
  pub(crate) fn worker_failed(&mut self, error: &BackendError) {
    self.failures += 1;
    if self.failures == self.registry.config.max_attempts.max(1) {
      self.registry.emit(Event::WorkerFailed { worker: self.index, error: error.clone() });
    }
    self.back_off();
  }

  /// Pauses after consecutive failures: `backoff_initial × 2^(failures-1)`, at most
  /// `backoff_max`; cut short when the pool closes.
  pub(crate) fn back_off(&self) {
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

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
  format!("the backend panicked: {}", payload_text(panic))
}

/// The message a panic carried.
pub(crate) fn payload_text(panic: &(dyn std::any::Any + Send)) -> String {
  panic
    .downcast_ref::<&str>()
    .map(ToString::to_string)
    .or_else(|| panic.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "unknown payload".to_owned())
}
