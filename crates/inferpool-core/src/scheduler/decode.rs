//! A worker's cohorts of a seq2seq model ([`crate::generation`]): starting one from an encoded
//! batch, stepping them in turn, and letting rows go (finished, cancelled, expired, failed).
//!
//! The loop ([`WorkerThread::round`]) alternates: one step of the next cohort (round robin over
//! the worker's cohorts), then one new batch of any model if there is one. A prompt that
//! arrives while cohorts decode is encoded after at most one step and takes its first step at
//! once, so its first token waits for about two steps plus its own encoding.
//!
//! Memory: each row reserves `cache_bytes_per_token × (prompt + max_new_tokens)` bytes in the
//! worker's memory count while it decodes. A batch that would pass the worker's budget keeps
//! only the rows that fit (the rest wait in the worker's deque, where others can steal them);
//! a worker without cohorts always takes at least one row.

use std::{
  panic::{AssertUnwindSafe, catch_unwind},
  sync::{Arc, atomic::Ordering},
  time::Instant,
};

use crate::{
  BackendError, BackendErrorKind, FinishReason, ModelKind, PoolError, WorkerState,
  batch::Queued,
  generation::{
    cohort::{Cohort, Row},
    sampling,
  },
  scheduler::{execute::panic_message, registry::CANCEL, worker::WorkerThread},
};

/// What happens to a row after a step.
enum Fate {
  Continue,
  Finished(FinishReason),
}

impl WorkerThread {
  /// Whether this worker has rows decoding.
  pub(crate) fn decoding(&self) -> bool {
    self.models.iter().any(|m| !m.cohorts.is_empty())
  }

  /// Most items its next batch of `model` may hold: `max_batch_size`, less the rows of
  /// `model` it decodes already for a seq2seq model.
  pub(crate) fn batch_cap(&self, model: usize) -> usize {
    let cap = self.registry.config.policy.max_batch_size.max(1);
    if self.registry.models[model].config.kind == ModelKind::Seq2Seq {
      let rows: usize = self.models[model].cohorts.iter().map(|c| c.rows.len()).sum();
      cap.saturating_sub(rows)
    } else {
      cap
    }
  }

  /// Encodes `batch` of seq2seq model `model` as a new cohort and runs its first step.
  pub(crate) fn start_cohort(&mut self, model: usize, mut batch: Vec<Queued>) {
    let registry = Arc::clone(&self.registry);
    let shared = &registry.models[model];
    let per_token = self.models[model]
      .slot
      .as_mut()
      .and_then(|s| s.backend.seq2seq())
      .map(|s| s.cache_bytes_per_token());
    let Some(per_token) = per_token else {
      let error = BackendError::new(BackendErrorKind::Model, "the model cannot generate text");
      for item in batch {
        let request = Arc::clone(&item.request);
        drop(item);
        request.fail(PoolError::Backend(error.clone()));
      }
      return;
    };
    // Keep what fits the worker's memory budget (at least one row when nothing decodes here).
    let budget = registry.config.budget(self.index);
    let mut used = self.shared().memory_used.load(Ordering::Relaxed);
    let reserve = |item: &Queued| {
      let new = item.request.sequences.get(item.index).map_or(0, |s| s.params.max_new_tokens);
      per_token.saturating_mul((item.len() + new) as u64)
    };
    let mut fits = 0;
    for item in &batch {
      let need = reserve(item);
      if used.saturating_add(need) > budget && (fits > 0 || self.decoding()) {
        break;
      }
      used = used.saturating_add(need);
      fits += 1;
    }
    for item in batch.split_off(fits) {
      self.models[model].deque.push(item);
    }
    if batch.is_empty() {
      return;
    }
    let count = batch.len();
    let tokens: usize = batch.iter().map(Queued::len).sum();
    shared.in_flight.fetch_add(count, Ordering::Relaxed);
    shared.in_flight_tokens.fetch_add(tokens, Ordering::Relaxed);
    shared.served_at.store(registry.nanos_since_epoch(), Ordering::Relaxed);
    self.set_state(WorkerState::Busy);
    self.keep_off_spread_cores(model);
    let started = Instant::now();
    for item in &batch {
      shared
        .histograms
        .queue_wait
        .record_duration(started.saturating_duration_since(item.admitted_at));
    }
    let inputs: Vec<&crate::TokenizedText> = batch.iter().map(|q| &q.input).collect();
    let slot = self.models[model].slot.as_mut().expect("checked above");
    let seq2seq = slot.backend.seq2seq().expect("checked above");
    let encoded =
      catch_unwind(AssertUnwindSafe(|| seq2seq.encode(&inputs))).unwrap_or_else(|panic| {
        Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
      });
    drop(inputs);
    let worker = &registry.workers[self.index];
    worker.models[model].histograms.inference.record_duration(started.elapsed());
    worker.models[model].histograms.batch_size.record_count(count);
    worker.batches.fetch_add(1, Ordering::Relaxed);
    let state = match encoded {
      Ok(state) => {
        // The encoder's speed sizes this worker's share of the model's queue, as a batch's
        // speed does for an embedding model.
        let padded = batch.iter().map(Queued::len).max().unwrap_or(0) * count;
        let elapsed = started.elapsed();
        self.models[model].budget.observe(padded, elapsed);
        self.record_speed(model, count, padded, elapsed);
        state
      }
      Err(error) => {
        shared.in_flight.fetch_sub(count, Ordering::Relaxed);
        shared.in_flight_tokens.fetch_sub(tokens, Ordering::Relaxed);
        worker.errors.fetch_add(1, Ordering::Relaxed);
        self.settle_rows(batch, &error);
        return;
      }
    };
    let now = Instant::now();
    let rows = batch
      .into_iter()
      .map(|item| {
        let sequence = item.request.sequences[item.index].clone();
        let rng = sampling::rng(&sequence.params, item.seq, item.index);
        let reserved = reserve(&item);
        Row { item, sequence, tokens: Vec::new(), rng, reserved, last_token_at: now }
      })
      .collect::<Vec<_>>();
    let reserved: u64 = rows.iter().map(|r| r.reserved).sum();
    self.shared().memory_used.fetch_add(reserved, Ordering::Relaxed);
    shared.generation.cohorts.fetch_add(1, Ordering::Relaxed);
    shared.generation.rows.fetch_add(rows.len(), Ordering::Relaxed);
    let cohort = Cohort { state, rows, steps: 0 };
    if let Some(cohort) = self.step(model, cohort) {
      self.models[model].cohorts.push(cohort);
    }
  }

  /// Runs one step of the worker's next cohort (round robin over its models' cohorts).
  pub(crate) fn step_next(&mut self) {
    let total: usize = self.models.iter().map(|m| m.cohorts.len()).sum();
    if total == 0 {
      return;
    }
    let mut turn = self.decode_next % total;
    self.decode_next = self.decode_next.wrapping_add(1);
    for model in 0..self.models.len() {
      let here = self.models[model].cohorts.len();
      if turn < here {
        let cohort = self.models[model].cohorts.remove(turn);
        if let Some(cohort) = self.step(model, cohort) {
          self.models[model].cohorts.insert(turn, cohort);
        }
        return;
      }
      turn -= here;
    }
  }

  /// One decoder step of `cohort`: rows answered elsewhere or past their deadline leave first,
  /// then every row gets its next token, and finished rows leave. Returns the cohort while
  /// rows remain.
  fn step(&mut self, model: usize, cohort: Cohort) -> Option<Cohort> {
    let registry = Arc::clone(&self.registry);
    let now = Instant::now();
    let keep: Vec<bool> = cohort
      .rows
      .iter()
      .map(|row| {
        let request = &row.item.request;
        if request.deadline.is_some_and(|d| d <= now) {
          request.fail(PoolError::Timeout);
        }
        !request.is_finished()
      })
      .collect();
    let mut cohort = self.keep_rows(model, cohort, &keep)?;
    let ids = self.models[model]
      .slot
      .as_mut()
      .and_then(|s| s.backend.seq2seq())
      .map(|s| (s.decoder_start(), s.eos()));
    let Some((start, eos)) = ids else {
      // Unloading sends a model's cohorts back first; were one left, its rows start again.
      let error = BackendError::new(BackendErrorKind::Model, "the model is not loaded here");
      self.abandon(model, cohort, &error);
      return None;
    };
    let inputs: Vec<u32> =
      cohort.rows.iter().map(|row| row.tokens.last().copied().unwrap_or(start)).collect();
    self.set_state(WorkerState::Busy);
    self.keep_off_spread_cores(model);
    let started = Instant::now();
    let mut logits = std::mem::take(&mut self.logits);
    let slot = self.models[model].slot.as_mut().expect("a cohort decodes on a loaded model");
    let seq2seq = slot.backend.seq2seq().expect("checked above");
    let ran =
      catch_unwind(AssertUnwindSafe(|| seq2seq.step(&mut *cohort.state, &inputs, &mut logits)))
        .unwrap_or_else(|panic| {
          Err(BackendError::new(BackendErrorKind::Panic, panic_message(&*panic)))
        });
    slot.last_used = Instant::now();
    slot.usage.add(cohort.rows.len(), slot.last_used);
    let vocabulary = match ran {
      Ok(v) if v > 0 && logits.len() == v * cohort.rows.len() => v,
      Ok(v) => {
        let error = BackendError::new(
          BackendErrorKind::Run,
          format!(
            "a decoder step gave {} logits for {} rows of {v}",
            logits.len(),
            cohort.rows.len()
          ),
        );
        self.logits = logits;
        self.abandon(model, cohort, &error);
        return None;
      }
      Err(error) => {
        self.logits = logits;
        self.abandon(model, cohort, &error);
        return None;
      }
    };
    let finished_at = Instant::now();
    let shared = &registry.models[model];
    let worker = &registry.workers[self.index];
    worker.models[model].histograms.inference.record_duration(finished_at - started);
    worker.busy_nanos.fetch_add(
      u64::try_from((finished_at - started).as_nanos()).unwrap_or(u64::MAX),
      Ordering::Relaxed,
    );
    if self.failing() {
      registry.emit(crate::Event::WorkerRecovered { worker: self.index });
    }
    self.failures = 0;
    let keep = self.advance(model, &mut cohort, &mut logits, (vocabulary, eos), finished_at);
    self.logits = logits;
    let done = keep.iter().filter(|k| !**k).count() as u64;
    worker.items.fetch_add(done, Ordering::Relaxed);
    worker.models[model].items.fetch_add(done, Ordering::Relaxed);
    shared.items.fetch_add(done, Ordering::Relaxed);
    self.keep_rows(model, cohort, &keep)
  }

  /// Gives every row of `cohort` its next token from `logits` (one row of `vocabulary` scores
  /// each), tells its sink, and says which rows go on (the others have finished, their sinks
  /// told why).
  fn advance(
    &self,
    model: usize,
    cohort: &mut Cohort,
    logits: &mut [f32],
    (vocabulary, eos): (usize, u32),
    finished_at: Instant,
  ) -> Vec<bool> {
    let shared = &self.registry.models[model];
    let mut fates = Vec::with_capacity(cohort.rows.len());
    let mut generated = 0;
    for (row, scores) in cohort.rows.iter_mut().zip(logits.chunks_exact_mut(vocabulary)) {
      let params = &row.sequence.params;
      let token = sampling::next_token(scores, &row.tokens, params, eos, &mut row.rng);
      let gap = finished_at.saturating_duration_since(row.last_token_at);
      if cohort.steps == 0 {
        shared
          .generation
          .first_token
          .record_duration(finished_at.saturating_duration_since(row.item.admitted_at));
      } else {
        shared.generation.per_token.record_duration(gap);
      }
      row.last_token_at = finished_at;
      if token == eos {
        fates.push(Fate::Finished(FinishReason::Eos));
        continue;
      }
      generated += 1;
      row.tokens.push(token);
      let stop = row.sequence.sink.push(token);
      fates.push(if stop {
        Fate::Finished(FinishReason::Stop)
      } else if row.tokens.len() >= params.max_new_tokens {
        Fate::Finished(FinishReason::Length)
      } else {
        Fate::Continue
      });
    }
    cohort.steps += 1;
    shared.generation.add_tokens(generated, finished_at);
    let mut keep = Vec::with_capacity(fates.len());
    for (row, fate) in cohort.rows.iter().zip(&fates) {
      if let Fate::Finished(reason) = fate {
        row.sequence.sink.finish(*reason);
      }
      keep.push(matches!(fate, Fate::Continue));
    }
    keep
  }

  /// Lets the rows not marked in `keep` leave `cohort` (each answered as its request's row when
  /// the request still waits for it; its reservation and counts released) and drops their
  /// caches. Returns the cohort while rows remain.
  fn keep_rows(&mut self, model: usize, mut cohort: Cohort, keep: &[bool]) -> Option<Cohort> {
    if keep.iter().all(|k| *k) {
      return (!cohort.rows.is_empty()).then_some(cohort);
    }
    let rows = std::mem::take(&mut cohort.rows);
    let mut indices = Vec::with_capacity(rows.len());
    let mut answers = Vec::new();
    for (index, (row, keep)) in rows.into_iter().zip(keep).enumerate() {
      if *keep {
        cohort.rows.push(row);
        indices.push(index);
      } else {
        let request = Arc::clone(&row.item.request);
        let index = row.item.index;
        // The item leaves `outstanding` before its request may be answered.
        drop(self.release(model, row));
        answers.push((request, index));
      }
    }
    let empty = cohort.rows.is_empty();
    if empty {
      self.registry.models[model].generation.cohorts.fetch_sub(1, Ordering::Relaxed);
    }
    // Answered once the counts are settled: a caller never sees its own rows still counted.
    for (request, index) in answers {
      request.complete_row(index, &[]);
    }
    if empty {
      return None;
    }
    if let Err(error) = cohort.state.retain(&indices) {
      self.abandon(model, cohort, &error);
      return None;
    }
    Some(cohort)
  }

  /// A row leaves its cohort: its counts and reservation go. Returns its item.
  fn release(&self, model: usize, row: Row) -> Queued {
    let shared = &self.registry.models[model];
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    shared.in_flight_tokens.fetch_sub(row.item.len(), Ordering::Relaxed);
    shared.generation.rows.fetch_sub(1, Ordering::Relaxed);
    self.shared().memory_used.fetch_sub(row.reserved, Ordering::Relaxed);
    row.item
  }

  /// The rows of a cohort that cannot go on, each either to be decoded again from the start
  /// (its sink forgot its tokens) or failed with `error` (its tokens were streamed already).
  fn unwind(&self, model: usize, cohort: Cohort, error: &PoolError) -> Vec<Queued> {
    self.registry.models[model].generation.cohorts.fetch_sub(1, Ordering::Relaxed);
    let mut again = Vec::with_capacity(cohort.rows.len());
    for row in cohort.rows {
      let restartable = row.sequence.sink.restart();
      let item = self.release(model, row);
      if restartable {
        again.push(item);
      } else {
        let request = Arc::clone(&item.request);
        drop(item);
        request.fail(error.clone());
      }
    }
    again
  }

  /// A cohort whose step failed: its rows are retried elsewhere or failed
  /// ([`WorkerThread::retry_or_fail`]), and it counts as a failed batch.
  pub(crate) fn abandon(&mut self, model: usize, cohort: Cohort, error: &BackendError) {
    self.registry.workers[self.index].errors.fetch_add(1, Ordering::Relaxed);
    let items = self.unwind(model, cohort, &PoolError::Backend(error.clone()));
    self.settle_rows(items, error);
  }

  /// The worker unloads `model`: its rows go back to the queue to start again elsewhere (or
  /// fail, when their tokens were streamed already). Not a failure of theirs.
  pub(crate) fn requeue_cohorts(&mut self, model: usize) {
    let error = PoolError::Unavailable(format!(
      "model {:?} was unloaded from worker {} while it generated",
      self.registry.models[model].config.name, self.index
    ));
    let mut moved = false;
    for cohort in std::mem::take(&mut self.models[model].cohorts) {
      for item in self.unwind(model, cohort, &error) {
        self.registry.push(item);
        moved = true;
      }
    }
    if moved {
      self.registry.sleep.notify(crate::scheduler::sleep::Wake::All);
    }
  }

  /// Prompts whose encoding or decoding failed. One prompt can make a whole cohort fail: with
  /// several, each half starts again as a cohort of its own (and a failing half is halved
  /// again), so that only the prompts that fail on their own are retried elsewhere or failed
  /// ([`WorkerThread::retry_or_fail`]) and count against the worker.
  fn settle_rows(&mut self, mut items: Vec<Queued>, error: &BackendError) {
    let cancelling = self.registry.closing() == CANCEL;
    if items.len() > 1 && !cancelling && error.kind != BackendErrorKind::OutOfMemory {
      let model = items[0].request.model;
      let second = items.split_off(items.len() / 2);
      self.start_cohort(model, items);
      self.start_cohort(model, second);
      return;
    }
    if error.kind == BackendErrorKind::OutOfMemory && items.len() > 1 && !cancelling {
      // Smaller cohorts may fit: the budget halves, and the prompts wait for their turn here.
      let model = items[0].request.model;
      let padded = items.iter().map(Queued::len).max().unwrap_or(0) * items.len();
      self.models[model].budget.out_of_memory(padded);
      for item in items {
        self.models[model].deque.push(item);
      }
      return;
    }
    for item in items {
      self.retry_or_fail(item, error, cancelling);
    }
    if error.kind != BackendErrorKind::InvalidInput {
      self.worker_failed(error);
    }
  }

  /// Fails every row this worker decodes for `model` (every model when `None`) with `error`:
  /// the pool closes, or the worker goes.
  pub(crate) fn fail_cohorts(&mut self, model: Option<usize>, error: &PoolError) {
    for m in 0..self.models.len() {
      if model.is_some_and(|only| only != m) {
        continue;
      }
      for cohort in std::mem::take(&mut self.models[m].cohorts) {
        self.registry.models[m].generation.cohorts.fetch_sub(1, Ordering::Relaxed);
        for row in cohort.rows {
          let request = Arc::clone(&row.item.request);
          drop(self.release(m, row));
          request.fail(error.clone());
        }
      }
    }
  }
}
