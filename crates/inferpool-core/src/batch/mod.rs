//! The batch policy: which of the items a worker holds go into its next batch.
//!
//! Decided once per batch, when the worker's device is free ([`select`]):
//! 1. The candidates are a window of queued items the worker holds (see the scheduler).
//! 2. They are sorted by length and the batch is a run of neighbours in that order, so items of
//!    similar length travel together and padding shrinks.
//! 3. The run always contains the most urgent candidate (the priority whose turn it is, usually
//!    interactive, then oldest), so no item starves behind shorter ones.
//! 4. It holds at most `cap` items and its padded cost (longest × count) stays within the
//!    token budget; an item longer than the budget still runs, alone.
//! 5. Its padding stays within `max_padding` of its real tokens, or within what one more batch
//!    would cost (the worker's fitted cost model), whichever allows more: sorting by length
//!    only pays when the items left out can batch with their own lengths later.
//! 6. Nothing waits for a full batch: whatever the window holds is enough.

pub(crate) mod budget;
pub(crate) mod queue;
pub(crate) mod share;

use std::{
  sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
  },
  time::{Duration, Instant},
};

use crate::{
  TokenizedText,
  request::{Priority, Request},
};

/// Limits that shape every batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchPolicy {
  /// Most items in one batch.
  pub max_batch_size: usize,
  /// Most padded tokens (longest item × item count) in one batch (lowered for good on a worker
  /// whose batch ran out of memory). One item longer than this still runs, alone.
  pub max_batch_tokens: usize,
  /// Most queued items one worker sorts by length per batch (it takes at most one batch's worth
  /// from the queue at a time; more can gather in its deque from earlier batches and steals).
  pub window: usize,
  /// How long an idle worker may hold a partial batch open for more arrivals. Zero (the
  /// default) runs whatever is there at once.
  pub max_wait: Duration,
  /// Most padding a batch may carry, as a fraction of its real tokens (0.02 = padded tokens at
  /// most 2% above real ones), unless the padding costs less than one more batch would. A batch
  /// stops growing before it would exceed this.
  pub max_padding: f64,
  /// Padding is also allowed up to what one more batch would cost (the worker's fitted cost
  /// model), when that allows more than `max_padding`.
  pub pad_within_batch_cost: bool,
  /// How a free worker sizes its part of a model's queue.
  pub share: ShareRule,
  /// A worker whose speed on a model is not measured yet takes batches this many times smaller
  /// than its share (1: no smaller first batch), so a slow device is not handed a large part
  /// of the queue before its speed is known.
  pub first_batch_divisor: usize,
  /// A batch slower than this shrinks the worker's token budget (and a batch faster than half
  /// of it lets the budget grow back), so one batch does not hold a device for long.
  pub target_latency: Duration,
  /// Bulk goes first on every `fairness_interval`-th batch of a worker, even when interactive
  /// work waits (tokio's `global_queue_interval` idea); 0 never lets bulk go first.
  pub fairness_interval: u32,
  /// A worker that decodes nothing holds a seq2seq model's partial batch open until its oldest
  /// prompt has waited this long, so that a burst of calls becomes one cohort.
  pub cohort_gather: Duration,
}

/// How a free worker sizes its part of a model's queued tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareRule {
  /// Enough to finish when every worker holding the model finishes, given their measured speeds
  /// and the batches they are running (`share::fair_share`).
  WaterFilling,
  /// The queue divided evenly by the workers holding the model.
  Equal,
}

impl Default for BatchPolicy {
  fn default() -> Self {
    Self {
      max_batch_size: 64,
      max_batch_tokens: 16_384,
      window: 2048,
      max_wait: Duration::ZERO,
      max_padding: 0.02,
      pad_within_batch_cost: true,
      share: ShareRule::WaterFilling,
      first_batch_divisor: 4,
      target_latency: Duration::from_secs(2),
      fairness_interval: 4,
      cohort_gather: Duration::from_millis(2),
    }
  }
}

/// One queued item: which request, which row of it, and its tokens.
#[derive(Debug)]
pub(crate) struct Queued {
  /// The request the item belongs to.
  pub(crate) request: Arc<Request>,
  /// The item's row in the request's result.
  pub(crate) index: usize,
  /// The tokens to run.
  pub(crate) input: TokenizedText,
  /// Admission order across the pool (smaller = older).
  pub(crate) seq: u64,
  /// When the item was admitted.
  pub(crate) admitted_at: Instant,
  /// Failed runs so far.
  pub(crate) attempts: u32,
  /// The pool's counts of items (and their tokens) not yet completed; decremented when the item
  /// is dropped, which happens exactly once, whatever its fate.
  pub(crate) outstanding: Arc<Outstanding>,
}

/// Items accepted and not yet settled, and their tokens: one per model, each counting into the
/// pool's total.
#[derive(Debug, Default)]
pub(crate) struct Outstanding {
  /// Items (the drain protocol and admission read the pool's total).
  pub(crate) items: AtomicUsize,
  /// Their padded-length tokens (the tail split reads this).
  pub(crate) tokens: AtomicUsize,
  /// The pool's total, for a model's count.
  pub(crate) total: Option<Arc<Outstanding>>,
}

impl Outstanding {
  fn release(&self, tokens: usize) {
    self.tokens.fetch_sub(tokens, Ordering::Relaxed);
    // SeqCst: part of the drain protocol (see `Pool::submit`).
    self.items.fetch_sub(1, Ordering::SeqCst);
    if let Some(total) = &self.total {
      total.release(tokens);
    }
  }
}

impl Drop for Queued {
  fn drop(&mut self) {
    self.outstanding.release(self.len());
    if std::thread::panicking() {
      // A worker is unwinding with this item in hand: nothing else will answer it.
      self.request.fail(crate::PoolError::Internal(
        "a worker thread panicked while it held this call's texts".to_owned(),
      ));
    }
  }
}

impl Queued {
  /// Sort key of urgency when `first` goes first: that priority, then oldest.
  fn urgency(&self, first: Priority) -> (bool, u64) {
    (self.request.priority != first, self.seq)
  }

  /// Padded length used for cost (an empty item still occupies one position).
  pub(crate) fn len(&self) -> usize {
    self.input.len().max(1)
  }
}

/// A worker's measured batch cost: `fixed + per_token × padded tokens` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CostModel {
  /// Seconds every batch costs, whatever its size.
  pub(crate) fixed: f64,
  /// Seconds per padded token.
  pub(crate) per_token: f64,
}

impl CostModel {
  /// Tokens that cost as much as one batch's fixed cost: padding up to this much is cheaper
  /// than running the items in a batch of their own.
  #[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a small token count"
  )]
  fn batch_equivalent(self) -> usize {
    (self.fixed / self.per_token).min(1e9) as usize
  }
}

/// What [`select`] chose.
#[derive(Debug)]
pub(crate) struct Selection {
  /// Items to run, sorted by length.
  pub(crate) batch: Vec<Queued>,
  /// Candidates not chosen, most urgent first.
  pub(crate) rest: Vec<Queued>,
}

/// Cuts one batch out of `candidates` (see the module docs), built around the oldest candidate
/// of priority `first` (or the oldest one, when none has it).
pub(crate) fn select(
  mut candidates: Vec<Queued>,
  cap: usize,
  token_budget: usize,
  max_padding: f64,
  cost: Option<CostModel>,
  first: Priority,
) -> Selection {
  if candidates.is_empty() {
    return Selection { batch: candidates, rest: Vec::new() };
  }
  candidates.sort_by_key(|q| (q.len(), q.urgency(first)));
  let most_urgent = candidates
    .iter()
    .enumerate()
    .min_by_key(|(_, q)| q.urgency(first))
    .map(|(i, _)| i)
    .expect("candidates is not empty");
  let cap = cap.max(1);
  let budget = token_budget.max(1);
  let len_at = |i: usize| candidates[i].len();
  // Padding is also fine up to what one more batch would cost (it lets a few short leftovers
  // ride along instead of paying a batch of their own).
  let free_padding = cost.map_or(0, CostModel::batch_equivalent);

  let (mut lo, mut hi) = (most_urgent, most_urgent + 1);
  let mut real = len_at(most_urgent);
  // Whether a run of `count` items padded to `longest` with `real` real tokens is acceptable.
  #[expect(clippy::cast_precision_loss, reason = "token counts are far below 2^52")]
  let fits = |longest: usize, count: usize, real: usize| {
    let padded = longest * count;
    padded <= budget
      && (padded as f64 <= real as f64 * (1.0 + max_padding) || padded - real <= free_padding)
  };
  while hi - lo < cap {
    let count = hi - lo + 1;
    // Prefer shorter neighbours: they never raise the padded length.
    if lo > 0 && fits(len_at(hi - 1), count, real + len_at(lo - 1)) {
      lo -= 1;
      real += len_at(lo);
    } else if hi < candidates.len() && fits(len_at(hi), count, real + len_at(hi)) {
      real += len_at(hi);
      hi += 1;
    } else {
      break;
    }
  }

  let mut rest: Vec<Queued> = candidates.drain(hi..).collect();
  let batch: Vec<Queued> = candidates.drain(lo..).collect();
  rest.append(&mut candidates);
  rest.sort_by_key(|q| q.urgency(first));
  Selection { batch, rest }
}

#[cfg(test)]
pub(crate) mod tests {
  use super::*;
  use crate::request::{Priority, Request};

  /// Queued items of `lengths` tokens, one request, admitted in order.
  pub(crate) fn items(lengths: &[usize], priority: Priority) -> Vec<Queued> {
    let request = Arc::new(Request::new(lengths.len(), 0, priority, None, None, Box::new(|_| {})));
    let outstanding = Arc::new(Outstanding::default());
    outstanding.items.store(lengths.len(), Ordering::SeqCst);
    outstanding.tokens.store(lengths.iter().map(|&l| l.max(1)).sum(), Ordering::SeqCst);
    lengths
      .iter()
      .enumerate()
      .map(|(index, &len)| Queued {
        request: Arc::clone(&request),
        index,
        input: TokenizedText { ids: vec![1; len], type_ids: vec![0; len] },
        seq: index as u64,
        admitted_at: Instant::now(),
        attempts: 0,
        outstanding: Arc::clone(&outstanding),
      })
      .collect()
  }

  fn indices(batch: &[Queued]) -> Vec<usize> {
    batch.iter().map(|q| q.index).collect()
  }

  #[test]
  fn takes_a_partial_batch_without_waiting() {
    let s = select(items(&[5, 3], Priority::Bulk), 8, 1000, 1.0, None, Priority::Interactive);
    assert_eq!(indices(&s.batch), vec![1, 0]);
    assert!(s.rest.is_empty());
  }

  #[test]
  fn groups_similar_lengths_and_keeps_the_oldest() {
    let s =
      select(items(&[100, 5, 99, 6], Priority::Bulk), 2, 10_000, 0.05, None, Priority::Interactive);
    // The oldest (100 tokens) goes with its nearest neighbour in length, 99.
    assert_eq!(indices(&s.batch), vec![2, 0]);
    assert_eq!(indices(&s.rest), vec![1, 3]);
  }

  #[test]
  fn respects_the_token_budget() {
    let s =
      select(items(&[10, 10, 10, 10], Priority::Bulk), 10, 30, 0.05, None, Priority::Interactive);
    assert_eq!(s.batch.len(), 3);
    // An item longer than the budget still runs, alone.
    assert_eq!(
      select(items(&[50, 50], Priority::Bulk), 10, 30, 0.05, None, Priority::Interactive)
        .batch
        .len(),
      1
    );
  }

  #[test]
  fn bounds_padding() {
    // 10 and 20 together would pad 30 real tokens to 40.
    let s =
      select(items(&[10, 20, 10], Priority::Bulk), 8, 1000, 0.05, None, Priority::Interactive);
    assert_eq!(indices(&s.batch), vec![0, 2]);
    let s = select(items(&[10, 20, 10], Priority::Bulk), 8, 1000, 0.5, None, Priority::Interactive);
    assert_eq!(s.batch.len(), 3);
  }

  #[test]
  fn a_cost_model_trades_padding_against_batch_overhead() {
    // Costly batches: padding 10 up to 20 is worth it to run all four together.
    let heavy = CostModel { fixed: 1.0, per_token: 0.001 };
    let s = select(
      items(&[10, 10, 20, 20], Priority::Bulk),
      8,
      1000,
      0.05,
      Some(heavy),
      Priority::Interactive,
    );
    assert_eq!(s.batch.len(), 4);
    // Free batches, costly tokens: the two short ones run alone.
    let light = CostModel { fixed: 0.0, per_token: 0.001 };
    let s = select(
      items(&[10, 10, 20, 20], Priority::Bulk),
      8,
      1000,
      0.05,
      Some(light),
      Priority::Interactive,
    );
    assert_eq!(indices(&s.batch), vec![0, 1]);
  }

  #[test]
  fn interactive_items_are_most_urgent() {
    let mut candidates = items(&[4, 4, 4], Priority::Bulk);
    let mut interactive = items(&[40], Priority::Interactive);
    interactive[0].seq = 99;
    candidates.append(&mut interactive);
    let s = select(candidates, 1, 1000, 0.05, None, Priority::Interactive);
    assert_eq!(s.batch[0].request.priority, Priority::Interactive);
  }

  #[test]
  fn on_bulk_turns_the_oldest_bulk_item_goes_first() {
    let mut candidates = items(&[40], Priority::Interactive);
    let mut bulk = items(&[4, 4], Priority::Bulk);
    bulk[0].seq = 7;
    bulk[1].seq = 5;
    candidates.append(&mut bulk);
    let s = select(candidates, 1, 1000, 0.05, None, Priority::Bulk);
    assert_eq!(s.batch[0].request.priority, Priority::Bulk);
    assert_eq!(s.batch[0].seq, 5);
    assert_eq!(s.rest.len(), 2);
    // Without bulk candidates, the turn falls to the oldest item.
    let s = select(items(&[40, 30], Priority::Interactive), 1, 1000, 0.05, None, Priority::Bulk);
    assert_eq!(s.batch[0].index, 0);
  }

  #[test]
  fn dropping_an_item_counts_it_done() {
    let batch = items(&[1, 2, 3], Priority::Bulk);
    let outstanding = Arc::clone(&batch[0].outstanding);
    drop(batch);
    assert_eq!(outstanding.items.load(Ordering::SeqCst), 0);
    assert_eq!(outstanding.tokens.load(Ordering::SeqCst), 0);
  }
}
