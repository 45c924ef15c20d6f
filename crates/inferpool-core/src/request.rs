//! Request bookkeeping: results placed by index, exactly one completion per request.
//!
//! Invariants:
//! 1. A request's reply is taken out of its `Option` under the request's lock, so it is called
//!    at most once; it is called outside the lock.
//! 2. The reply is called with `Ok` only when every row has been written, or with the first
//!    error; later rows and errors for a finished request are dropped.
//! 3. `finished` is set before the reply runs, so workers can skip items of finished requests
//!    without taking the lock.

use std::sync::{
  Mutex,
  atomic::{AtomicBool, Ordering},
};

use crate::PoolError;

/// How a request is answered: the flat result (`items × dimension` values, row `i` for item `i`)
/// or the reason it failed.
pub type Reply = Box<dyn FnOnce(Result<Vec<f32>, PoolError>) + Send>;

/// One submitted request.
pub(crate) struct Request {
  /// Width of one row.
  dimension: usize,
  /// Set once the reply has been taken; lets workers skip dead items cheaply.
  finished: AtomicBool,
  /// Rows written so far and the reply, under one lock.
  state: Mutex<State>,
}

struct State {
  /// The flat output buffer, filled row by row.
  data: Vec<f32>,
  /// Rows not yet written.
  remaining: usize,
  /// The reply, until it is called.
  reply: Option<Reply>,
}

impl std::fmt::Debug for Request {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Request").field("finished", &self.is_finished()).finish_non_exhaustive()
  }
}

impl Request {
  pub(crate) fn new(items: usize, dimension: usize, reply: Reply) -> Self {
    Self {
      dimension,
      finished: AtomicBool::new(false),
      state: Mutex::new(State {
        data: vec![0.0; items * dimension],
        remaining: items,
        reply: Some(reply),
      }),
    }
  }

  /// Whether the request has already been answered.
  pub(crate) fn is_finished(&self) -> bool {
    // Acquire pairs with the Release store in `take_reply`: a worker that sees `true` knows the
    // reply is gone and its row would be dropped anyway.
    self.finished.load(Ordering::Acquire)
  }

  fn take_reply(state: &mut State, finished: &AtomicBool) -> Option<Reply> {
    let reply = state.reply.take();
    if reply.is_some() {
      finished.store(true, Ordering::Release);
    }
    reply
  }

  /// Writes row `index`; answers the request when it was the last one.
  pub(crate) fn complete_row(&self, index: usize, row: &[f32]) {
    debug_assert_eq!(row.len(), self.dimension);
    let done = {
      let mut state = self.state.lock().expect("request lock poisoned. This is a bug.");
      if state.reply.is_none() {
        return;
      }
      let start = index * self.dimension;
      state.data[start..start + self.dimension].copy_from_slice(row);
      state.remaining -= 1;
      if state.remaining == 0 {
        let data = std::mem::take(&mut state.data);
        Self::take_reply(&mut state, &self.finished).map(|reply| (reply, data))
      } else {
        None
      }
    };
    if let Some((reply, data)) = done {
      reply(Ok(data));
    }
  }

  /// Answers the request with `error` unless it has been answered already.
  pub(crate) fn fail(&self, error: PoolError) {
    let reply = {
      let mut state = self.state.lock().expect("request lock poisoned. This is a bug.");
      state.data = Vec::new();
      Self::take_reply(&mut state, &self.finished)
    };
    if let Some(reply) = reply {
      reply(Err(error));
    }
  }
}
