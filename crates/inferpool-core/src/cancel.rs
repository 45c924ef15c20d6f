//! A caller's handle on one call, for callers that cannot keep the [`crate::Ticket`] a submit
//! returns (a binding whose submit runs on another thread while its caller may already want to
//! cancel).
//!
//! The handle exists before the call is submitted. A cancel that comes first is kept in the
//! handle and refuses the submit; one that comes later answers the call at once, whether its
//! texts are still being tokenized, are queued, or are running (rows that finish later are
//! dropped). The handle belongs to its call: nothing is kept in a table, so nothing outlives it
//! and no later call can be reached by mistake.

use std::sync::{Arc, Mutex};

use crate::{PoolError, request::Request};

/// Cancels one call (see the module docs). Share it with [`crate::SubmitOptions::handle`].
#[derive(Debug, Default)]
pub struct CallHandle {
  state: Mutex<State>,
}

#[derive(Debug, Default)]
enum State {
  /// Not submitted yet.
  #[default]
  Open,
  /// Cancelled before it was submitted.
  Cancelled(PoolError),
  /// Submitted.
  Attached(Arc<Request>),
}

impl CallHandle {
  /// A handle for a call not submitted yet.
  #[must_use]
  pub fn new() -> Self {
    Self::default()
  }

  fn state(&self) -> std::sync::MutexGuard<'_, State> {
    self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
  }

  /// Answers the call with `error` unless it has been answered already; its texts not started
  /// yet are not run. Returns whether this cancel decided the outcome.
  pub fn cancel(&self, error: PoolError) -> bool {
    let mut state = self.state();
    match &*state {
      State::Open => {
        *state = State::Cancelled(error);
        true
      }
      State::Cancelled(_) => false,
      State::Attached(request) => {
        let request = Arc::clone(request);
        drop(state);
        if request.is_finished() {
          return false;
        }
        request.fail(error);
        true
      }
    }
  }

  /// Binds the handle to its submitted request; the error of a cancel that came first.
  pub(crate) fn attach(&self, request: &Arc<Request>) -> Result<(), PoolError> {
    let mut state = self.state();
    match &*state {
      State::Open => {
        *state = State::Attached(Arc::clone(request));
        Ok(())
      }
      State::Cancelled(error) => Err(error.clone()),
      State::Attached(_) => Err(PoolError::InvalidInput("a call handle was used twice".to_owned())),
    }
  }
}
