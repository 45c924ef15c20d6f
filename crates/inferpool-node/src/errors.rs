//! How errors cross into JavaScript: as an `Error` whose `code` property is one of
//! [`BindingErrorCode`] (the TypeScript `PoolErrorCode`s the native side can raise), and whose
//! `message` is the error's own, never parsed.
//!
//! * Synchronous methods return [`Result`], a `napi::Result` whose status is the code: napi-rs
//!   throws it as an `Error` with that `code`.
//! * napi-rs rejects the promise of an `async fn` with its own status as the code, so
//!   asynchronous methods build their promise themselves: `promise` runs a future on the async
//!   runtime, and a call's answer settles its promise from the worker (`call::Answer`); either
//!   way the error becomes the `Error` with the code on the JavaScript thread, and the promise is
//!   rejected with it, unchanged.
//! * An event carries its error as data, a [`BindingError`].

use std::{
  future::Future,
  panic::{AssertUnwindSafe, catch_unwind},
};

use inferpool_core::{BackendError, BackendErrorKind, PoolError};
use napi::{
  Env, JsError,
  bindgen_prelude::{PromiseRaw, ToNapiValue},
};
use napi_derive::napi;

/// What went wrong, as the `code` of the JavaScript error (`PoolErrorCode` in TypeScript).
#[napi(string_enum = "UPPER_SNAKE")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingErrorCode {
  /// An argument or option is malformed.
  InvalidInput,
  /// No model at the given path, or no ONNX file in the folder.
  ModelNotFound,
  /// The model's files exist but cannot be used.
  ModelInvalid,
  /// The ONNX Runtime library is missing, unloadable or too old.
  OrtLoadFailed,
  /// A device cannot run the model.
  DeviceUnavailable,
  /// A model cannot be loaded where it was asked for now.
  ModelUnavailable,
  /// ONNX Runtime failed on a batch.
  InferenceFailed,
  /// The pool was closed.
  PoolClosed,
  /// Accepting the call would exceed `maxQueuedItems`.
  Overloaded,
  /// The call did not finish within its time.
  Timeout,
  /// The call was cancelled.
  Aborted,
  /// A bug: a caught panic, a lost task.
  Internal,
}

impl AsRef<str> for BindingErrorCode {
  fn as_ref(&self) -> &str {
    match self {
      Self::InvalidInput => "INVALID_INPUT",
      Self::ModelNotFound => "MODEL_NOT_FOUND",
      Self::ModelInvalid => "MODEL_INVALID",
      Self::OrtLoadFailed => "ORT_LOAD_FAILED",
      Self::DeviceUnavailable => "DEVICE_UNAVAILABLE",
      Self::ModelUnavailable => "MODEL_UNAVAILABLE",
      Self::InferenceFailed => "INFERENCE_FAILED",
      Self::PoolClosed => "POOL_CLOSED",
      Self::Overloaded => "OVERLOADED",
      Self::Timeout => "TIMEOUT",
      Self::Aborted => "ABORTED",
      Self::Internal => "INTERNAL",
    }
  }
}

impl From<BackendErrorKind> for BindingErrorCode {
  fn from(kind: BackendErrorKind) -> Self {
    match kind {
      BackendErrorKind::InvalidInput => Self::InvalidInput,
      BackendErrorKind::Runtime => Self::OrtLoadFailed,
      BackendErrorKind::ModelNotFound => Self::ModelNotFound,
      BackendErrorKind::Model => Self::ModelInvalid,
      BackendErrorKind::Device => Self::DeviceUnavailable,
      BackendErrorKind::Run | BackendErrorKind::OutOfMemory => Self::InferenceFailed,
      BackendErrorKind::Panic => Self::Internal,
    }
  }
}

impl From<&PoolError> for BindingErrorCode {
  fn from(error: &PoolError) -> Self {
    match error {
      PoolError::InvalidInput(_) => Self::InvalidInput,
      PoolError::Closed => Self::PoolClosed,
      PoolError::Overloaded { .. } => Self::Overloaded,
      PoolError::Timeout => Self::Timeout,
      PoolError::Cancelled => Self::Aborted,
      PoolError::Unavailable(_) => Self::ModelUnavailable,
      PoolError::Internal(_) => Self::Internal,
      PoolError::Backend(error) => error.kind.into(),
    }
  }
}

/// A `napi::Result` whose error carries a [`BindingErrorCode`].
pub type Result<T> = napi::Result<T, BindingErrorCode>;

/// An error with `code`.
pub(crate) fn coded(
  code: BindingErrorCode,
  message: impl std::fmt::Display,
) -> napi::Error<BindingErrorCode> {
  napi::Error::new(code, message)
}

/// A backend error with its code.
pub(crate) fn backend_error(error: &BackendError) -> napi::Error<BindingErrorCode> {
  coded(error.kind.into(), &error.message)
}

/// A pool error with its code.
pub(crate) fn pool_error(error: &PoolError) -> napi::Error<BindingErrorCode> {
  match error {
    PoolError::InvalidInput(message)
    | PoolError::Unavailable(message)
    | PoolError::Internal(message) => coded(error.into(), message),
    PoolError::Backend(backend) => backend_error(backend),
    PoolError::Closed
    | PoolError::Overloaded { .. }
    | PoolError::Timeout
    | PoolError::Cancelled => coded(error.into(), error),
  }
}

/// Runs `f`, turning a panic into an `INTERNAL` error: a panic must never unwind into Node.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
  catch_unwind(AssertUnwindSafe(f))
    .map_err(|_| coded(BindingErrorCode::Internal, format!("{what} panicked")))
}

/// A blocking task of the pool that failed (it panicked): `INTERNAL`.
pub(crate) fn join_error(error: &tokio::task::JoinError) -> napi::Error<BindingErrorCode> {
  coded(BindingErrorCode::Internal, format!("a pool task failed: {error}"))
}

/// Runs `future` on the async runtime and returns its promise: resolved with its value, or
/// rejected with an `Error` whose `code` is the error's (see the module documentation).
pub(crate) fn promise<T>(
  env: &Env,
  future: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<PromiseRaw<'_, T>>
where
  T: ToNapiValue + Send + 'static,
{
  env
    .spawn_future_with_callback(async move { Ok(future.await) }, |env, settled| {
      settled.map_err(|error| {
        // On the JavaScript thread: napi-rs rejects with this very object, `code` included.
        napi::Error::from_unknown_without_coercion(JsError::from(error).into_unknown(*env))
      })
    })
    .map_err(|e| coded(BindingErrorCode::Internal, format!("cannot start a task: {}", e.reason)))
}

/// An error as data, as an event carries it: `fromNative` takes it as it takes a thrown one.
#[napi(object)]
#[derive(Clone, Debug)]
pub struct BindingError {
  /// What went wrong.
  pub code: BindingErrorCode,
  /// Why, in words.
  pub message: String,
}

impl From<&BackendError> for BindingError {
  fn from(error: &BackendError) -> Self {
    Self { code: error.kind.into(), message: error.message.clone() }
  }
}
