//! Cancellation by a caller-chosen id, for callers that cannot hold a [`Ticket`] (a binding whose
//! JavaScript side only has a number to pass back).
//!
//! A cancel may arrive before the request is registered (the submit is still on its way): it is
//! remembered and applied at registration, so no abort is lost.

use std::{collections::HashMap, sync::Mutex};

use crate::{PoolError, Ticket};

/// Live tickets by id, and cancels that arrived before their ticket.
#[derive(Debug, Default)]
pub struct Cancellations {
  state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
  /// Registered requests not yet forgotten.
  live: HashMap<u64, Ticket>,
  /// Cancels whose request was not registered yet.
  early: HashMap<u64, PoolError>,
}

impl Cancellations {
  fn state(&self) -> std::sync::MutexGuard<'_, State> {
    self.state.lock().expect("cancellation lock poisoned. This is a bug.")
  }

  /// Registers the ticket of request `id`, applying a cancel that came first.
  pub fn register(&self, id: u64, ticket: Ticket) {
    let mut state = self.state();
    match state.early.remove(&id) {
      Some(error) => {
        drop(state);
        ticket.cancel_with(error);
      }
      None => {
        state.live.insert(id, ticket);
      }
    }
  }

  /// Cancels request `id` with `error`; returns whether a registered request was answered by it.
  pub fn cancel(&self, id: u64, error: PoolError) -> bool {
    let ticket = {
      let mut state = self.state();
      let ticket = state.live.remove(&id);
      if ticket.is_none() {
        state.early.insert(id, error.clone());
      }
      ticket
    };
    ticket.is_some_and(|t| t.cancel_with(error))
  }

  /// Drops everything known about request `id` (call when it has settled).
  pub fn forget(&self, id: u64) {
    let mut state = self.state();
    state.live.remove(&id);
    state.early.remove(&id);
  }

  /// Requests currently registered.
  #[must_use]
  pub fn len(&self) -> usize {
    self.state().live.len()
  }

  /// Whether no request is registered.
  #[must_use]
  pub fn is_empty(&self) -> bool {
    self.len() == 0
  }
}
