//! A worker thread: its loop, and how it finds its next batch (crossbeam's `find_task` shape).

use std::{
  collections::VecDeque,
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{Arc, atomic::Ordering},
  time::Instant,
};

use crossbeam_deque::{Steal, Worker};

use crate::{
  BackendError, BackendErrorKind, Event, PoolError, Priority, UnloadReason, WorkerState,
  batch::{
    Queued, ShareRule,
    budget::Budget,
    queue::CLASSES,
    select,
    share::{Peer, fair_share},
  },
  models::residency::Slot,
  scheduler::{
    execute::panic_message,
    registry::{CANCEL, Command, DRAIN, OPEN, Registry, WorkerShared, drain_injectors, lock},
    sleep::{Round, Wake, run_worker},
  },
};

/// How many random victims a worker tries per steal round before it concludes there is nothing.
const STEAL_ROUNDS: usize = 2;

/// One model on one worker: the worker's share of the model's work and what it holds of it.
pub(crate) struct WorkerModel {
  /// The worker's deque of the model's items (others steal from its other end).
  pub(crate) deque: Worker<Queued>,
  /// The loaded backend, while the worker holds the model.
  pub(crate) slot: Option<Slot>,
  /// Token budget and cost fit (kept across unloads).
  pub(crate) budget: Budget,
  /// Consecutive failed loads, and no new attempt on demand before the instant given.
  pub(crate) load_failure: (u32, Option<Instant>),
  /// The bulk length class its sweep takes from next.
  pub(crate) cursor: usize,
  /// The cohorts it decodes (a seq2seq model's; [`crate::generation`]).
  pub(crate) cohorts: Vec<crate::generation::cohort::Cohort>,
}

/// One worker's private state (rayon's `WorkerThread`).
pub(crate) struct WorkerThread {
  pub(crate) index: usize,
  pub(crate) registry: Arc<Registry>,
  /// Per model, by index.
  pub(crate) models: Vec<WorkerModel>,
  /// When its recent switches happened (for `max_switches_per_hour`).
  pub(crate) switches: VecDeque<Instant>,
  /// When the earliest such pause of a model with queued work ends.
  pub(crate) retry_at: Option<Instant>,
  /// Batches taken so far (drives the fairness tick).
  pub(crate) tick: u64,
  /// Consecutive failed batches (drives the back-off).
  pub(crate) failures: u32,
  /// xorshift state for choosing steal victims.
  pub(crate) rng: u64,
  /// Reused output buffer.
  pub(crate) out: Vec<f32>,
  /// Reused logits buffer of decoder steps.
  pub(crate) logits: Vec<f32>,
  /// Which cohort steps next (round robin over its cohorts).
  pub(crate) decode_next: usize,
  /// Whether a cohort steps before the next batch is looked for.
  pub(crate) decode_turn: bool,
}

impl Drop for WorkerThread {
  /// Whatever its deques still hold when it goes (only after a failure: a normal exit leaves
  /// them empty) is answered, not lost.
  fn drop(&mut self) {
    self.fail_cohorts(None, &PoolError::Closed);
    for model in &self.models {
      while let Some(item) = model.deque.pop() {
        item.request.fail(PoolError::Closed);
      }
    }
  }
}

impl WorkerThread {
  pub(crate) fn new(index: usize, registry: Arc<Registry>, deques: Vec<Worker<Queued>>) -> Self {
    let models: Vec<WorkerModel> = deques
      .into_iter()
      .map(|deque| WorkerModel {
        deque,
        slot: None,
        budget: Budget::new(
          registry.config.policy.max_batch_tokens,
          registry.config.policy.target_latency,
        ),
        load_failure: (0, None),
        cursor: CLASSES - 1,
        cohorts: Vec::new(),
      })
      .collect();
    registry.workers[index].token_budget.store(models[0].budget.tokens(), Ordering::Relaxed);
    Self {
      index,
      registry,
      models,
      switches: VecDeque::new(),
      retry_at: None,
      tick: 0,
      failures: 0,
      rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1),
      out: Vec::new(),
      logits: Vec::new(),
      decode_next: 0,
      decode_turn: false,
    }
  }

  pub(crate) fn shared(&self) -> &WorkerShared {
    &self.registry.workers[self.index]
  }

  pub(crate) fn set_state(&self, state: WorkerState) {
    self.shared().state.store(state as u8, Ordering::Relaxed);
  }

  /// Whether its batches have failed `max_attempts` times in a row.
  pub(crate) fn failing(&self) -> bool {
    self.failures >= self.registry.config.max_attempts.max(1)
  }

  /// The worker's loop ([`run_worker`]: the sleep epoch is read before each round). A panic
  /// outside the backend call (which has its own guard) fails the calls whose texts the worker
  /// held, counts as a failed batch, and the worker goes on after its back-off.
  pub(crate) fn run(mut self) {
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
  pub(crate) fn round(&mut self) -> Round {
    let mode = self.registry.closing();
    if mode == CANCEL {
      self.cancel_local();
      drain_injectors(&self.registry);
      return Round::Exit;
    }
    self.handle_commands();
    let next_idle_check = self.unload_idle();
    // Decoding cohorts alternate with new batches ([`crate::scheduler::decode`]).
    if self.decode_turn && self.decoding() {
      self.decode_turn = false;
      self.step_next();
      return Round::Worked;
    }
    if let Some(found) = self.find_work() {
      self.run_batch(found);
      self.decode_turn = true;
      return Round::Worked;
    }
    if self.decoding() {
      self.step_next();
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

  pub(crate) fn handle_commands(&mut self) {
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

  pub(crate) fn cancel_local(&mut self) {
    self.fail_cohorts(None, &PoolError::Closed);
    for deque in self.models.iter().map(|m| &m.deque) {
      while let Some(item) = deque.pop() {
        item.request.fail(PoolError::Closed);
      }
    }
  }

  pub(crate) fn next_random(&mut self) -> u64 {
    self.rng ^= self.rng << 13;
    self.rng ^= self.rng >> 7;
    self.rng ^= self.rng << 17;
    self.rng
  }
}

impl WorkerThread {
  /// This worker's share of `model`'s queued tokens ([`fair_share`]): what it should take so
  /// that it finishes with every other worker holding the model, given their measured speeds
  /// and the batches they are running. A worker not measured yet counts at the mean of the
  /// measured ones; when none is measured, all count as equal and free.
  pub(crate) fn share(&self, model: usize) -> usize {
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
    let share = match r.config.policy.share {
      ShareRule::WaterFilling => fair_share(queued as f64, mine, &mut peers).ceil() as usize,
      ShareRule::Equal => queued.div_ceil(peers.len() + 1),
    };
    // Items are whole: round the share to the nearest item rather than down, or the last items
    // of a job are left over for an extra round of small batches.
    share.saturating_add(queued / queued_items.max(1) / 2).max(1)
  }

  /// How many of `model`'s queued prompts (`held` of them in this worker's hands) this worker
  /// takes: enough that every serving worker holding the model decodes as many of its rows as
  /// the others once the queue is shared out.
  pub(crate) fn even_split(&self, model: usize, held: usize) -> usize {
    let registry = &self.registry;
    let others = registry
      .workers
      .iter()
      .enumerate()
      .filter(|(i, w)| *i != self.index && w.holds(model) && w.state().serves())
      .count();
    let shared = &registry.models[model];
    let queued = shared.queued_items().max(held);
    // Rows being encoded by the others count too: they are about to decode.
    let decoding = shared.in_flight.load(Ordering::Relaxed);
    let mine: usize = self.models[model].cohorts.iter().map(|c| c.rows.len()).sum();
    (decoding + queued).div_ceil(others + 1).saturating_sub(mine).max(1)
  }

  /// Picks a model and finds its next batch. `None` when nothing is runnable anywhere for the
  /// models this worker may run.
  pub(crate) fn find_work(&mut self) -> Option<(usize, Vec<Queued>)> {
    let mut skip = 0_u64;
    for _ in 0..self.registry.models.len() {
      let model = self.choose_model(skip)?;
      if let Some(batch) = self.find_batch(model) {
        return Some((model, batch));
      }
      skip |= 1 << model;
    }
    None
  }

  /// Looks for the next batch of `model` (module docs, steps 3–5).
  pub(crate) fn find_batch(&mut self, model: usize) -> Option<Vec<Queued>> {
    let policy = self.registry.config.policy;
    let cap = self.batch_cap(model);
    if cap == 0 {
      return None;
    }
    let seq2seq = self.registry.models[model].config.kind == crate::ModelKind::Seq2Seq;
    let mut budget = self.batch_budget(model, seq2seq);
    self.tick += 1;
    let bulk_first =
      policy.fairness_interval > 0 && self.tick.is_multiple_of(u64::from(policy.fairness_interval));
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
      // An idle worker may hold a partial batch open for more arrivals: once for `max_wait`;
      // for a seq2seq model, until its oldest prompt has waited `cohort_gather` (a burst of
      // calls then starts as one cohort rather than one cohort per call).
      let window = if seq2seq { policy.cohort_gather } else { policy.max_wait };
      if (!held || seq2seq)
        && !window.is_zero()
        && !self.decoding()
        && candidates.len() < cap
        && self.registry.closing() == OPEN
      {
        let oldest =
          candidates.iter().map(|c| c.admitted_at).min().expect("candidates is not empty");
        let waited = oldest.elapsed();
        if waited < window {
          held = true;
          let seen = self.registry.sleep.epoch();
          for item in candidates {
            self.models[model].deque.push(item);
          }
          let wait = window.saturating_sub(waited);
          self.registry.sleep.sleep(self.index, seen, Some(wait));
          // What arrived meanwhile is queued too: this worker's share has grown with it.
          budget = self.batch_budget(model, seq2seq);
          continue;
        }
      }
      // The prompts are shared out so that the workers holding the model decode as many rows
      // each: each step costs a run of the whole decoder, so rows decode best in few, large
      // cohorts.
      let cap = if seq2seq { cap.min(self.even_split(model, candidates.len())) } else { cap };
      // A seq2seq batch becomes a cohort: every row it leaves out decodes in a cohort of its
      // own, each step a run of the whole decoder, while padding costs only encoder work.
      let max_padding = if seq2seq { f64::INFINITY } else { policy.max_padding };
      let mut selection = select(
        candidates,
        cap,
        budget,
        max_padding,
        self.models[model].budget.cost_model().filter(|_| policy.pad_within_batch_cost),
        if bulk_first { Priority::Bulk } else { Priority::Interactive },
      );
      // The rest goes back in length order: a thief takes from the front, so what it steals is a
      // run of similar lengths that batches with little padding.
      selection.rest.sort_by_key(Queued::len);
      for item in selection.rest {
        if seq2seq {
          // Left for the other workers' shares: whole, where one of them takes it in one go
          // (a steal would take half of it, and the rest would start cohorts of its own).
          self.registry.push(item);
        } else {
          self.models[model].deque.push(item);
        }
      }
      if !self.models[model].deque.is_empty() || !self.registry.models[model].queues.is_empty() {
        // Work is left: let an idle worker that holds the model have it.
        let prefer = self.registry.holder_mask(model) & !(1 << self.index);
        self.registry.sleep.notify(Wake::One { prefer });
      }
      return Some(selection.batch);
    }
  }

  /// The tokens this worker's next batch of `model` may hold: its token budget, at most its
  /// share of what is queued (steps 3 and 4 of the module docs).
  fn batch_budget(&self, model: usize, seq2seq: bool) -> usize {
    // A cohort's rows are split by count, not by tokens.
    let share = if seq2seq { usize::MAX } else { self.share(model) };
    let budget = self.models[model].budget.tokens().min(share);
    if !seq2seq && self.shared().models[model].token_speed.load(Ordering::Relaxed) == 0 {
      // Speed not measured yet: a smaller first batch measures it.
      return budget.div_ceil(self.registry.config.policy.first_batch_divisor.max(1));
    }
    budget
  }

  /// Collects candidates of `model`: interactive items first (unless it is bulk's turn), else
  /// what the local deque holds, topped up from the bulk length classes to `cap` items and
  /// `budget` tokens (on bulk's turn, of bulk items: interactive ones left in the deque by
  /// earlier batches do not count), else a steal.
  pub(crate) fn gather(
    &mut self,
    model: usize,
    cap: usize,
    budget: usize,
    bulk_first: bool,
  ) -> Vec<Queued> {
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
    pop_into(&self.models[model].deque, &mut candidates, window);
    let counted = candidates.iter().filter(|q| !bulk_first || q.request.priority == Priority::Bulk);
    let (count, held) = counted.fold((0, 0), |(n, t), q| (n + 1, t + q.len()));
    if count < cap && held < budget {
      let own = &mut self.models[model];
      queues.refill(&own.deque, &mut own.cursor, cap - count, budget - held);
      pop_into(&self.models[model].deque, &mut candidates, window);
    }
    if candidates.is_empty() {
      self.steal(model);
      pop_into(&self.models[model].deque, &mut candidates, window);
    }
    if candidates.is_empty() && bulk_first {
      queues.take_interactive(cap, &mut candidates);
    }
    candidates
  }

  /// Steals a batch of `model`'s items from random victims into the local deque (crossbeam's
  /// `find_task` shape: loop only while some victim answered `Retry`).
  pub(crate) fn steal(&mut self, model: usize) {
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
        match self.registry.stealers[victim][model].steal_batch(&self.models[model].deque) {
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
}

/// Moves items from `deque` into `out` until it holds `window`.
pub(crate) fn pop_into(deque: &Worker<Queued>, out: &mut Vec<Queued>, window: usize) {
  while out.len() < window {
    let Some(item) = deque.pop() else { break };
    out.push(item);
  }
}

/// `item` when it should still run. Otherwise it is dropped, and when its deadline passed its
/// request is answered with `Timeout`, after the drop: a caller never sees its answered items
/// still counted.
pub(crate) fn runnable(item: Queued, now: Instant) -> Option<Queued> {
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
