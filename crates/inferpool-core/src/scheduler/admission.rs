//! Waiting for room (`wait_when_full`): calls that would exceed `max_queued_items` wait in one
//! FIFO, in call order, and are admitted as earlier work completes (TEI's `acquire_permit`, as a
//! queue instead of blocked threads).
//!
//! Invariants:
//! 1. A call is admitted only when every call that waited before it has been admitted or has
//!    left: the front of the queue decides, nothing overtakes it.
//! 2. A waiting call still answers its cancel and its deadline at once (through its request);
//!    its entry is dropped when the queue meets it.
//! 3. Its items are counted in [`Admission::items`] from the moment it is submitted until its
//!    places are reserved in the pool's outstanding count (reserved first, uncounted here
//!    after, both `SeqCst`), so a draining worker that reads this count and then the
//!    outstanding one never sees both at zero while a call is on its way.

use std::{
  collections::VecDeque,
  sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
  },
  time::Instant,
};

use crate::{PoolError, TokenizedText, request::Request};

/// A tokenized call waiting for room.
pub(crate) struct Waiting {
  pub(crate) request: Arc<Request>,
  pub(crate) model: usize,
  pub(crate) items: Vec<TokenizedText>,
}

/// The queue of waiting calls.
#[derive(Default)]
pub(crate) struct Admission {
  queue: Mutex<VecDeque<Waiting>>,
  /// Items of calls that wait, or that are being tokenized in order to wait.
  pub(crate) items: AtomicUsize,
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
  fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
    self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
  }

  /// Puts a tokenized call at the back (its items are already counted in `items`).
  pub(crate) fn enqueue(&self, call: Waiting) {
    self.queue().push_back(call);
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
    let mut queue = self.queue();
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

  fn call(items: usize, deadline: Option<Instant>) -> Waiting {
    Waiting {
      request: Arc::new(Request::new(items, 0, Priority::Bulk, deadline, None, Box::new(|_| {}))),
      model: 0,
      items: (0..items).map(|_| TokenizedText { ids: vec![1], type_ids: vec![0] }).collect(),
    }
  }

  fn queue(calls: Vec<Waiting>) -> Admission {
    let admission = Admission::default();
    for c in calls {
      admission.items.fetch_add(c.items.len(), Ordering::SeqCst);
      admission.enqueue(c);
    }
    admission
  }

  #[test]
  fn admits_in_order_while_calls_fit_and_never_overtakes() {
    let admission = queue(vec![call(3, None), call(5, None), call(1, None)]);
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
    let answered = call(2, None);
    answered.request.fail(PoolError::Cancelled);
    let past = Instant::now().checked_sub(std::time::Duration::from_millis(1));
    let admission = queue(vec![answered, call(1, past), call(2, None)]);
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
}
