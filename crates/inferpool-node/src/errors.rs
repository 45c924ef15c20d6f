//! How errors cross into JavaScript: with their code as a prefix of the message
//! (`CODE: message`); the TypeScript layer turns them into `PoolError` with that `code`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use inferpool_core::{BackendError, BackendErrorKind, PoolError};
use napi::bindgen_prelude::Result;

pub(crate) fn coded(code: &str, message: impl std::fmt::Display) -> napi::Error {
  napi::Error::from_reason(format!("{code}: {message}"))
}

pub(crate) fn backend_error(error: &BackendError) -> napi::Error {
  let code = match error.kind {
    BackendErrorKind::InvalidInput => "INVALID_INPUT",
    BackendErrorKind::Runtime => "ORT_LOAD_FAILED",
    BackendErrorKind::ModelNotFound => "MODEL_NOT_FOUND",
    BackendErrorKind::Model => "MODEL_INVALID",
    BackendErrorKind::Device => "DEVICE_UNAVAILABLE",
    BackendErrorKind::Run | BackendErrorKind::OutOfMemory => "INFERENCE_FAILED",
    BackendErrorKind::Panic => "INTERNAL",
  };
  coded(code, &error.message)
}

pub(crate) fn pool_error(error: &PoolError) -> napi::Error {
  match error {
    PoolError::InvalidInput(message) => coded("INVALID_INPUT", message),
    PoolError::Closed => coded("POOL_CLOSED", "the pool is closed"),
    PoolError::Overloaded { .. } => coded("OVERLOADED", error),
    PoolError::Timeout => coded("TIMEOUT", error),
    PoolError::Cancelled => coded("ABORTED", error),
    PoolError::Unavailable(message) => coded("MODEL_UNAVAILABLE", message),
    PoolError::Internal(message) => coded("INTERNAL", message),
    PoolError::Backend(error) => backend_error(error),
  }
}

/// Runs `f`, turning a panic into an `INTERNAL` error: a panic must never unwind into Node.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
  catch_unwind(AssertUnwindSafe(f)).map_err(|_| coded("INTERNAL", format!("{what} panicked")))
}

pub(crate) fn join_error(error: &tokio::task::JoinError) -> napi::Error {
  coded("INTERNAL", format!("a pool task failed: {error}"))
}
