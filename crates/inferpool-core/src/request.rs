//! Request bookkeeping: results placed by index, exactly one completion per request.
//!
//! Invariants:
//! 1. A request's reply is taken out of its `Option` under the request's lock, so it is called
//!    at most once; it is called outside the lock.
//! 2. The reply is called with `Ok` only when every row has been written, or with the first
//!    error; later rows and errors for a finished request are dropped.
//! 3. `finished` is set before the reply runs, so workers can skip items of finished requests
//!    without taking the lock.

use std::{
  sync::{
    Arc, Mutex, OnceLock,
    atomic::{AtomicBool, Ordering},
  },
  time::Instant,
};

use crate::PoolError;

/// Which queue a request's items wait in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
  /// Served first (a user waits on it).
  Interactive,
  /// Served when no interactive work waits, and at least every few batches regardless, so it is
  /// never starved.
  #[default]
  Bulk,
}

/// Per-request options of [`crate::Pool::submit`].
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
  /// Queue class.
  pub priority: Priority,
  /// Items not started by then are not run; the request fails with [`PoolError::Timeout`].
  pub deadline: Option<Instant>,
  /// Lets the caller cancel the request from the moment it is submitted, tokenization
  /// included.
  pub handle: Option<Arc<crate::CallHandle>>,
  /// Told how many of the request's items are done, every [`Progress::every`] items (and not
  /// for the last one: the reply says that).
  pub progress: Option<Progress>,
  /// Its place in line among waiting requests ([`crate::Pool::next_turn`]); taken when it is
  /// submitted if not given.
  pub turn: Option<u64>,
  /// Set to each item's token count (what the model is fed: special tokens included, after
  /// truncation) once the items are tokenized, before any of them is queued; so it is set
  /// whenever the reply is `Ok` for a non-empty request. Lets a caller report usage without
  /// tokenizing again.
  pub token_counts: Option<TokenCounts>,
}

/// Where [`SubmitOptions::token_counts`] are written: the caller keeps a clone and reads it
/// after the reply.
pub type TokenCounts = Arc<OnceLock<Vec<usize>>>;

/// A request's progress report: `report(done)` is called from a worker thread each time another
/// `every` items are done. It is called under the request's lock, so that its reports come in
/// order and all of them before the reply, whichever workers run the items: it must return
/// quickly and must not call into the pool.
#[derive(Clone)]
pub struct Progress {
  /// Items between two reports (at least 1).
  pub every: usize,
  /// Receives the number of items done.
  pub report: Arc<dyn Fn(usize) + Send + Sync>,
}

impl std::fmt::Debug for Progress {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Progress").field("every", &self.every).finish_non_exhaustive()
  }
}

/// How a request is answered: the flat result (`items × dimension` values, row `i` for item `i`)
/// or the reason it failed.
pub type Reply = Box<dyn FnOnce(Result<Vec<f32>, PoolError>) + Send>;

/// One submitted request.
pub(crate) struct Request {
  /// Index of the model that runs it.
  pub(crate) model: usize,
  /// Number of items (rows).
  items: usize,
  /// Queue class of every item.
  pub(crate) priority: Priority,
  /// Latest start time, if any.
  pub(crate) deadline: Option<Instant>,
  /// Where progress goes, if anywhere.
  progress: Option<Progress>,
  /// For a generation request, one per item: how it is decoded, where its tokens go (its rows
  /// are then empty: the sinks carry the results).
  pub(crate) sequences: Vec<crate::Sequence>,
  /// Set once the reply has been taken; lets workers skip dead items cheaply.
  finished: AtomicBool,
  /// Rows written so far and the reply, under one lock.
  state: Mutex<State>,
}

struct State {
  /// The flat output buffer, filled row by row; allocated by the first row (whose length is
  /// the model's dimension, known once the model is loaded).
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
  pub(crate) fn new(
    items: usize,
    model: usize,
    priority: Priority,
    deadline: Option<Instant>,
    progress: Option<Progress>,
    reply: Reply,
  ) -> Self {
    Self {
      model,
      items,
      priority,
      deadline,
      progress,
      sequences: Vec::new(),
      finished: AtomicBool::new(false),
      state: Mutex::new(State { data: Vec::new(), remaining: items, reply: Some(reply) }),
    }
  }

  /// The request of a generation call: one sequence per item.
  pub(crate) fn with_sequences(mut self, sequences: Vec<crate::Sequence>) -> Self {
    self.sequences = sequences;
    self
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
    let width = row.len();
    let answer = {
      let mut state = self.state.lock().expect("request lock poisoned. This is a bug.");
      if state.reply.is_none() {
        return;
      }
      if state.data.is_empty() {
        state.data = vec![0.0; self.items * width];
      }
      let start = index * width;
      state.data[start..start + width].copy_from_slice(row);
      state.remaining -= 1;
      if state.remaining == 0 {
        let data = std::mem::take(&mut state.data);
        Self::take_reply(&mut state, &self.finished).map(|reply| (reply, data))
      } else {
        let done = self.items - state.remaining;
        if let Some(progress) =
          self.progress.as_ref().filter(|p| done.is_multiple_of(p.every.max(1)))
        {
          // Under the lock: reports of two workers cannot cross, nor the reply overtake one.
          (progress.report)(done);
        }
        None
      }
    };
    if let Some((reply, data)) = answer {
      reply(Ok(data));
    }
  }

  /// Answers a request of zero items with an empty result.
  pub(crate) fn complete_empty(&self) {
    let reply = {
      let mut state = self.state.lock().expect("request lock poisoned. This is a bug.");
      Self::take_reply(&mut state, &self.finished)
    };
    if let Some(reply) = reply {
      reply(Ok(Vec::new()));
    }
  }

  /// Drops the reply without calling it (the submit that created the request failed and
  /// reports its error directly).
  pub(crate) fn forget_reply(&self) {
    let mut state = self.state.lock().expect("request lock poisoned. This is a bug.");
    drop(Self::take_reply(&mut state, &self.finished));
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

impl Drop for Request {
  /// The last line of the exactly-once guarantee: a request whose items all went away without
  /// an answer (which would be a bug) still answers its caller instead of leaving it waiting.
  fn drop(&mut self) {
    let reply = self.state.get_mut().map(|state| state.reply.take()).unwrap_or_default();
    if let Some(reply) = reply {
      reply(Err(PoolError::Internal("a request was dropped without an answer".to_owned())));
    }
  }
}
