//! Error types of the core.

/// What kind of failure a [`BackendError`] is; decides how the pool reacts to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendErrorKind {
  /// The input cannot be processed (bad text, too long, …). Retrying does not help.
  InvalidInput,
  /// The model runtime (e.g. the ONNX Runtime library) could not be loaded.
  Runtime,
  /// No model exists where one was asked for.
  ModelNotFound,
  /// The model could not be loaded or does not fit the expected shape.
  Model,
  /// The device could not be used.
  Device,
  /// Running the batch failed.
  Run,
  /// The device ran out of memory for this batch; a smaller batch may fit.
  OutOfMemory,
  /// The backend panicked; the panic was caught and the worker carries on.
  Panic,
}

/// A failure reported by a [`crate::Backend`] or [`crate::Tokenize`] implementation.
///
/// It is `Clone` so that one failed batch can answer every request waiting on it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
  /// How the pool should treat the failure.
  pub kind: BackendErrorKind,
  /// A readable description for the caller.
  pub message: String,
}

impl BackendError {
  /// Creates an error of `kind` with a message.
  pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
    Self { kind, message: message.into() }
  }
}

/// Why a request submitted to the [`crate::Pool`] did not produce results.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PoolError {
  /// The request itself is malformed.
  #[error("invalid input: {0}")]
  InvalidInput(String),
  /// The pool was closed before or while the request was waiting.
  #[error("the pool is closed")]
  Closed,
  /// Admitting the request would exceed `max_queued_items`.
  #[error(
    "the pool is overloaded: {queued} items queued, {requested} more requested, limit {limit}"
  )]
  Overloaded {
    /// Items accepted and not yet completed.
    queued: usize,
    /// Items in the rejected request.
    requested: usize,
    /// The configured limit.
    limit: usize,
  },
  /// The request's deadline passed before its items started.
  #[error("the request's deadline passed before it ran")]
  Timeout,
  /// The request was cancelled by its caller.
  #[error("the request was cancelled")]
  Cancelled,
  /// No worker can take the model now (memory budget, priorities, switch cap).
  #[error("{0}")]
  Unavailable(String),
  /// A bug inside the pool.
  #[error("internal error: {0}")]
  Internal(String),
  /// The backend failed on a batch holding one of the request's items.
  #[error(transparent)]
  Backend(#[from] BackendError),
}
