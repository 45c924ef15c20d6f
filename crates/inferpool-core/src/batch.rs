//! The batch policy: which queued items one worker runs next.
//!
//! Decided once per batch, under the queue lock, when a worker's device becomes free:
//! 1. Items of requests that are already answered (failed, cancelled) are dropped unseen.
//! 2. The batch size cap is `max_batch_size`, lowered to an even share of what is queued when
//!    other workers are idle (tail split), so the last items are spread instead of one worker
//!    taking them all. Nothing ever waits for a full batch: whatever is queued is taken.
//! 3. A window of the oldest `window` items is sorted by length and the batch is a run of
//!    neighbours in that order, so items of similar length travel together and padding shrinks.
//! 4. The run always contains the oldest queued item, so no item starves behind shorter ones,
//!    and its padded cost (longest length × count) stays within `max_batch_tokens`.
//! 5. Items not chosen go back to the front of the queue in their original order.

use std::{collections::VecDeque, sync::Arc};

use crate::{TokenizedText, request::Request};

/// Limits that shape every batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
  /// Most items in one batch.
  pub max_batch_size: usize,
  /// Most padded tokens (longest item × item count) in one batch. One item longer than this
  /// still runs, alone.
  pub max_batch_tokens: usize,
  /// How many of the oldest queued items are considered (and sorted by length) per batch.
  pub window: usize,
}

impl Default for BatchPolicy {
  fn default() -> Self {
    Self { max_batch_size: 64, max_batch_tokens: 16_384, window: 512 }
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
}

impl BatchPolicy {
  /// Takes the next batch out of `queue` (see the module docs). `idle_workers` counts the other
  /// workers waiting for work. Returns an empty batch only when nothing live is queued.
  pub(crate) fn take(&self, queue: &mut VecDeque<Queued>, idle_workers: usize) -> Vec<Queued> {
    let mut window = Vec::with_capacity(self.window.min(queue.len()));
    while window.len() < self.window.max(1) {
      let Some(item) = queue.pop_front() else { break };
      if !item.request.is_finished() {
        window.push(item);
      }
    }
    if window.is_empty() {
      return window;
    }
    let queued = window.len() + queue.len();
    let share = queued.div_ceil(idle_workers + 1);
    let cap = self.max_batch_size.min(share).max(1);

    // Window positions sorted by (length, age); `oldest` is where position 0 landed.
    let mut order: Vec<usize> = (0..window.len()).collect();
    order.sort_by_key(|&i| (window[i].input.len(), i));
    let oldest =
      order.iter().position(|&i| i == 0).expect("position 0 is in the window. This is a bug.");
    let len_at = |rank: usize| window[order[rank]].input.len().max(1);

    let (mut lo, mut hi) = (oldest, oldest + 1);
    while hi - lo < cap {
      let count = hi - lo + 1;
      if lo > 0 && len_at(hi - 1) * count <= self.max_batch_tokens {
        lo -= 1;
      } else if hi < order.len() && len_at(hi) * count <= self.max_batch_tokens {
        hi += 1;
      } else {
        break;
      }
    }

    let mut chosen = vec![false; window.len()];
    for &i in &order[lo..hi] {
      chosen[i] = true;
    }
    let mut batch = Vec::with_capacity(hi - lo);
    let mut rest = Vec::with_capacity(window.len() - (hi - lo));
    // Batch in length order (less padding work for the backend), rest in age order.
    let mut slots: Vec<Option<Queued>> = window.into_iter().map(Some).collect();
    for &i in &order[lo..hi] {
      batch.push(slots[i].take().expect("each slot is taken once. This is a bug."));
    }
    for (i, slot) in slots.into_iter().enumerate() {
      if !chosen[i] {
        rest.push(slot.expect("unchosen slots are still full. This is a bug."));
      }
    }
    for item in rest.into_iter().rev() {
      queue.push_front(item);
    }
    batch
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::request::Request;

  fn queue_of(lengths: &[usize]) -> VecDeque<Queued> {
    let request = Arc::new(Request::new(lengths.len(), 1, Box::new(|_| {})));
    lengths
      .iter()
      .enumerate()
      .map(|(index, &len)| Queued {
        request: Arc::clone(&request),
        index,
        input: TokenizedText { ids: vec![1; len], type_ids: vec![0; len] },
      })
      .collect()
  }

  fn indices(batch: &[Queued]) -> Vec<usize> {
    batch.iter().map(|q| q.index).collect()
  }

  #[test]
  fn takes_a_partial_batch_without_waiting() {
    let policy = BatchPolicy { max_batch_size: 8, ..BatchPolicy::default() };
    let mut queue = queue_of(&[5, 3]);
    let batch = policy.take(&mut queue, 0);
    assert_eq!(indices(&batch), vec![1, 0]);
    assert!(queue.is_empty());
  }

  #[test]
  fn groups_similar_lengths_and_keeps_the_oldest() {
    let policy = BatchPolicy { max_batch_size: 2, ..BatchPolicy::default() };
    let mut queue = queue_of(&[100, 5, 99, 6]);
    let batch = policy.take(&mut queue, 0);
    // The oldest (100 tokens) goes with its nearest neighbour in length, 99.
    assert_eq!(indices(&batch), vec![2, 0]);
    assert_eq!(indices(queue.make_contiguous()), vec![1, 3]);
  }

  #[test]
  fn respects_the_token_budget() {
    let policy = BatchPolicy { max_batch_size: 10, max_batch_tokens: 30, window: 16 };
    let mut queue = queue_of(&[10, 10, 10, 10]);
    assert_eq!(policy.take(&mut queue, 0).len(), 3);
    // An item longer than the budget still runs, alone.
    let mut queue = queue_of(&[50, 50]);
    assert_eq!(policy.take(&mut queue, 0).len(), 1);
  }

  #[test]
  fn splits_the_tail_across_idle_workers() {
    let policy = BatchPolicy { max_batch_size: 64, ..BatchPolicy::default() };
    let mut queue = queue_of(&[4; 10]);
    assert_eq!(policy.take(&mut queue, 1).len(), 5);
    assert_eq!(policy.take(&mut queue, 0).len(), 5);
  }

  #[test]
  fn skips_finished_requests() {
    let policy = BatchPolicy::default();
    let mut queue = queue_of(&[4, 4]);
    queue[0].request.fail(crate::PoolError::Closed);
    assert!(policy.take(&mut queue, 0).is_empty());
    assert!(queue.is_empty());
  }
}
