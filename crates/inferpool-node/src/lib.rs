//! Node.js binding of inferpool: `#[napi]` types, conversion and error mapping only. Each
//! exported type lives in its own module and each method delegates to `inferpool-core` (the
//! running pool) or `inferpool-ort` (building it).
//!
//! * [`pool`]: `createPool` and `BindingPool`, the running pool.
//! * [`call`]: `BindingCall`, one `embed` call; [`priority`]: its queue class.
//! * [`generation`]: `BindingGeneration`, one `generate` call and its stream.
//! * [`options`]: `BindingPoolOptions` and `BindingModelSpec`, converted to an
//!   [`inferpool_ort::PoolSpec`].
//! * [`events`], [`status`], [`metrics`]: what the pool reports.
//! * [`errors`]: how errors cross into JavaScript (with a `code`).

pub mod call;
pub mod enums;
pub mod errors;
pub mod events;
pub mod generation;
pub mod metrics;
mod numbers;
pub mod options;
pub mod pool;
pub mod priority;
pub mod status;

use std::path::PathBuf;

use inferpool_ort::init_runtime;
use napi_derive::napi;

use crate::errors::{Result, backend_error, guarded};

/// What was loaded by `initRuntime`.
#[napi(object)]
#[derive(Debug)]
pub struct BindingRuntimeInfo {
  /// Absolute path of the ONNX Runtime library.
  pub path: String,
  /// Its version, e.g. `1.29.0`.
  pub version: String,
}

/// Loads ONNX Runtime from an absolute path (once per process).
#[napi]
pub fn init_runtime_library(path: String) -> Result<BindingRuntimeInfo> {
  let info = guarded("loading ONNX Runtime", || init_runtime(&PathBuf::from(path)))?
    .map_err(|e| backend_error(&e))?;
  Ok(BindingRuntimeInfo { path: info.path.to_string_lossy().into_owned(), version: info.version })
}
