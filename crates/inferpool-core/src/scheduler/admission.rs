//! Waiting for room (`wait_when_full`): calls that would exceed `max_queued_items` wait in one
//! FIFO, in call order, and are admitted as earlier work completes (TEI's `acquire_permit`, as a
//! queue instead of blocked threads).
//!
//! Invariants:
//! 1. Calls are admitted in the order of their *turns*, taken when they were made (a binding
//!    takes it on the caller's thread, before the call is tokenized elsewhere): a call is
//!    admitted only when every call of an earlier turn has been admitted or has left, including
//!    calls still being tokenized. The front of the queue decides; nothing overtakes it.
//! 2. A waiting call still answers its cancel and its deadline at once (through its request);
//!    its entry is dropped when the queue meets it.
//! 3. Its items are counted in [`Admission::items`] from the moment it is submitted until its
//!    places are reserved in the pool's outstanding count (reserved first, uncounted here
//!    after, both `SeqCst`), so a draining worker that reads this count and then the
//!    outstanding one never sees both at zero while a call is on its way.

use std::{
  collections::{BTreeSet, VecDeque},
  sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
  },
  time::Instant,
};

use crate::{PoolError, TokenizedText, request::Request};

/// A tokenized call waiting for room.
pub(crate) struct Waiting {
  /// Its place in line.
  pub(crate) turn: u64,
  pub(crate) request: Arc<Request>,
  pub(crate) model: usize,
  pub(crate) items: Vec<TokenizedText>,
}

/// The queue of waiting calls, and the turns of those still being tokenized.
#[derive(Default)]
pub(crate) struct Admission {
  state: Mutex<State>,
  /// Items of calls that wait, or that are being tokenized in order to wait.
  pub(crate) items: AtomicUsize,
}

#[derive(Default)]
struct State {
  /// Tokenized calls, by turn.
  queue: VecDeque<Waiting>,
  /// Turns of calls counted in `items` that are still being tokenized.
  tokenizing: BTreeSet<u64>,
}

impl std::fmt::Debug for Admission {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Admission").field("items", &self.items).finish_non_exhaustive()
  }
}

/// What [`Admission::admit`] took off the queue.
#[derive(Default)]
pub(crate) struct Admitted {
  /// Calls whose places are now reserved: queue their items.
  pub(crate) calls: Vec<Waiting>,
  /// Calls to answer with an error (past their deadline, or the pool is cancelling).
  pub(crate) failed: Vec<(Arc<Request>, PoolError)>,
}

impl Admission {
  fn state(&self) -> std::sync::MutexGuard<'_, State> {
    self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
  }

  /// Counts a call of `count` items, with its `turn`, that is about to be tokenized (the
  /// calls of later turns wait for it).
  pub(crate) fn begin(&self, turn: u64, count: usize) {
    let mut state = self.state();
    state.tokenizing.insert(turn);
    self.items.fetch_add(count, Ordering::SeqCst);
  }

  /// Forgets a call counted by [`Admission::begin`] that will not wait (refused, answered or
  /// failed while it was tokenized).
  pub(crate) fn abandon(&self, turn: u64, count: usize) {
    let mut state = self.state();
    state.tokenizing.remove(&turn);
    self.items.fetch_sub(count, Ordering::SeqCst);
  }

  /// Puts a tokenized call in line, by its turn.
  pub(crate) fn enqueue(&self, call: Waiting) {
    let mut state = self.state();
    state.tokenizing.remove(&call.turn);
    let at = state.queue.partition_point(|c| c.turn < call.turn);
    state.queue.insert(at, call);
  }

  /// Takes calls from the front while they fit: each reserves its places in `outstanding`
  /// (items accepted and not completed, at most `limit`). Answered calls are dropped; calls
  /// past their deadline fail with `Timeout`, and every call with `refuse` when it is given.
  pub(crate) fn admit(
    &self,
    outstanding: &AtomicUsize,
    limit: usize,
    refuse: Option<&PoolError>,
  ) -> Admitted {
    let mut admitted = Admitted::default();
    let now = Instant::now();
    let mut state = self.state();
    let State { queue, tokenizing } = &mut *state;
    while let Some(front) = queue.front() {
      let count = front.items.len();
      let error = if front.request.is_finished() {
        Some(None)
      } else if let Some(error) = refuse {
        Some(Some(error.clone()))
      } else if front.request.deadline.is_some_and(|d| d <= now) {
        Some(Some(PoolError::Timeout))
      } else {
        None
      };
      if let Some(error) = error {
        let call = queue.pop_front().expect("the front exists");
        self.items.fetch_sub(count, Ordering::SeqCst);
        admitted.failed.extend(error.map(|e| (call.request, e)));
        continue;
      }
      if tokenizing.first().is_some_and(|&t| t < front.turn) {
        // A call made before it is still being tokenized: it goes first.
        break;
      }
      // Invariant 3: reserve, then uncount.
      let before = outstanding.fetch_add(count, Ordering::SeqCst);
      if before + count > limit {
        outstanding.fetch_sub(count, Ordering::SeqCst);
        break;
      }
      admitted.calls.push(queue.pop_front().expect("the front exists"));
      self.items.fetch_sub(count, Ordering::SeqCst);
    }
    admitted
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::request::Priority;

  fn call(turn: u64, items: usize, deadline: Option<Instant>) -> Waiting {
    Waiting {
      turn,
      request: Arc::new(Request::new(items, 0, Priority::Bulk, deadline, None, Box::new(|_| {}))),
      model: 0,
      items: (0..items).map(|_| TokenizedText { ids: vec![1], type_ids: vec![0] }).collect(),
    }
  }

  fn queue(calls: Vec<Waiting>) -> Admission {
    let admission = Admission::default();
    for c in calls {
      admission.begin(c.turn, c.items.len());
      admission.enqueue(c);
    }
    admission
  }

  #[test]
  fn admits_in_order_while_calls_fit_and_never_overtakes() {
    // Enqueued out of order (tokenizing took longer for some): admitted by turn.
    let admission = queue(vec![call(1, 5, None), call(0, 3, None), call(2, 1, None)]);
    let outstanding = AtomicUsize::new(4);
    // 4 + 3 fits under 8; 7 + 5 does not, and the call of 1 behind it waits too.
    let first = admission.admit(&outstanding, 8, None);
    assert_eq!(first.calls.iter().map(|c| c.items.len()).collect::<Vec<_>>(), vec![3]);
    assert_eq!(outstanding.load(Ordering::SeqCst), 7);
    assert_eq!(admission.items.load(Ordering::SeqCst), 6);
    outstanding.store(0, Ordering::SeqCst);
    let second = admission.admit(&outstanding, 8, None);
    assert_eq!(second.calls.iter().map(|c| c.items.len()).collect::<Vec<_>>(), vec![5, 1]);
    assert_eq!(outstanding.load(Ordering::SeqCst), 6);
    assert_eq!(admission.items.load(Ordering::SeqCst), 0);
  }

  #[test]
  fn drops_answered_calls_and_fails_expired_or_refused_ones() {
    let answered = call(0, 2, None);
    answered.request.fail(PoolError::Cancelled);
    let past = Instant::now().checked_sub(std::time::Duration::from_millis(1));
    let admission = queue(vec![answered, call(1, 1, past), call(2, 2, None)]);
    let outstanding = AtomicUsize::new(10);
    let result = admission.admit(&outstanding, 10, None);
    assert!(result.calls.is_empty());
    assert_eq!(result.failed.len(), 1);
    assert_eq!(result.failed[0].1, PoolError::Timeout);
    assert_eq!(admission.items.load(Ordering::SeqCst), 2, "the live call still waits");
    let refused = admission.admit(&outstanding, 10, Some(&PoolError::Closed));
    assert_eq!(
      refused.failed.iter().map(|f| f.1.clone()).collect::<Vec<_>>(),
      vec![PoolError::Closed]
    );
    assert_eq!(admission.items.load(Ordering::SeqCst), 0);
    assert_eq!(outstanding.load(Ordering::SeqCst), 10);
  }

  #[test]
  fn a_call_still_tokenizing_keeps_its_turn() {
    let admission = Admission::default();
    admission.begin(0, 4);
    admission.begin(1, 1);
    admission.enqueue(call(1, 1, None));
    let outstanding = AtomicUsize::new(0);
    assert!(admission.admit(&outstanding, 10, None).calls.is_empty(), "turn 1 overtook turn 0");
    admission.enqueue(call(0, 4, None));
    let admitted = admission.admit(&outstanding, 10, None);
    assert_eq!(admitted.calls.iter().map(|c| c.turn).collect::<Vec<_>>(), vec![0, 1]);
    // A call that leaves while it is tokenized releases the ones after it.
    admission.begin(2, 1);
    admission.begin(3, 1);
    admission.enqueue(call(3, 1, None));
    admission.abandon(2, 1);
    assert_eq!(admission.admit(&outstanding, 10, None).calls.len(), 1);
    assert_eq!(admission.items.load(Ordering::SeqCst), 0);
  }
}
