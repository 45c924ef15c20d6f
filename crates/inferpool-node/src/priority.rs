//! `BindingPriority`: the queue class of a call.

use inferpool_core::Priority;
use napi_derive::napi;

/// Queue class of a call.
#[napi(string_enum = "lowercase")]
#[derive(Clone, Copy, Debug)]
pub enum BindingPriority {
  /// Served first.
  Interactive,
  /// Served when no interactive work waits, and every few batches regardless.
  Bulk,
}

impl From<BindingPriority> for Priority {
  fn from(priority: BindingPriority) -> Self {
    match priority {
      BindingPriority::Interactive => Self::Interactive,
      BindingPriority::Bulk => Self::Bulk,
    }
  }
}
