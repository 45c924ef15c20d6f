//! Loading ONNX Runtime at run time.
//!
//! The library is opened once per process from an absolute path (relative paths would be
//! resolved against the `node` executable by `ort`). Its version is read through the C API's
//! `OrtGetApiBase()->GetVersionString()` before `ort` asks for its API level, so an old library is
//! reported with its path and version instead of a bare failure.

use std::{
  ffi::CStr,
  path::{Path, PathBuf},
  sync::{Mutex, OnceLock},
};

use inferpool_core::{BackendError, BackendErrorKind};
use ort::environment::Environment;

/// The oldest ONNX Runtime minor version this build accepts (`1.N`).
pub const MIN_ORT_MINOR: u32 = ort::MINOR_VERSION;

/// What was loaded.
#[derive(Clone, Debug)]
pub struct RuntimeInfo {
  /// Absolute path of the library.
  pub path: PathBuf,
  /// Version string the library reports, e.g. `1.29.0`.
  pub version: String,
}

struct Runtime {
  info: RuntimeInfo,
  environment: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

fn load_error(message: impl Into<String>) -> BackendError {
  BackendError::new(BackendErrorKind::Runtime, message)
}

/// Reads the version string of the library at `path` without initialising it.
fn library_version(path: &Path) -> Result<String, BackendError> {
  // SAFETY: loading ONNX Runtime runs its initialisers, which have no preconditions; the same
  // library is loaded again by `ort` right after, and the handle here is dropped at the end.
  let library = unsafe { libloading::Library::new(path) }
    .map_err(|e| load_error(format!("cannot load ONNX Runtime from {}: {e}", path.display())))?;
  // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release (onnxruntime_c_api.h).
  let get_api_base: libloading::Symbol<'_, unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
    unsafe { library.get(b"OrtGetApiBase\0") }.map_err(|_| {
      load_error(format!("{} is not an ONNX Runtime library (no OrtGetApiBase)", path.display()))
    })?;
  // SAFETY: the function takes no arguments and returns a pointer to a static struct.
  let base = unsafe { get_api_base() };
  if base.is_null() {
    return Err(load_error(format!("{} returned no API base", path.display())));
  }
  // SAFETY: `base` is non-null and points to the library's static `OrtApiBase`;
  // `GetVersionString` returns a static NUL-terminated string.
  let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) };
  Ok(version.to_string_lossy().into_owned())
}

/// Loads ONNX Runtime from `path` (absolute) unless it is loaded already. A second call with a
/// different path fails: one process holds one ONNX Runtime.
pub fn init_runtime(path: &Path) -> Result<RuntimeInfo, BackendError> {
  let _guard = INIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
  if let Some(runtime) = RUNTIME.get() {
    if runtime.info.path != path {
      return Err(load_error(format!(
        "ONNX Runtime {} is already loaded from {} in this process; cannot also load {}",
        runtime.info.version,
        runtime.info.path.display(),
        path.display()
      )));
    }
    return Ok(runtime.info.clone());
  }
  if !path.is_absolute() {
    return Err(load_error(format!(
      "the ONNX Runtime library path must be absolute, got {}",
      path.display()
    )));
  }
  if !path.is_file() {
    return Err(load_error(format!("no ONNX Runtime library at {}", path.display())));
  }
  let version = library_version(path)?;
  let minor = version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
  if minor < MIN_ORT_MINOR {
    return Err(load_error(format!(
      "ONNX Runtime at {} is version {version}; inferpool needs 1.{MIN_ORT_MINOR} or newer",
      path.display()
    )));
  }
  let environment = ort::init_from(path)
    .map_err(|e| {
      load_error(format!("cannot load ONNX Runtime {version} from {}: {e}", path.display()))
    })?
    .with_name("inferpool")
    .with_telemetry(false)
    .build()
    .map_err(|e| {
      load_error(format!("cannot start ONNX Runtime {version} from {}: {e}", path.display()))
    })?;
  let info = RuntimeInfo { path: path.to_path_buf(), version };
  let _ = RUNTIME.set(Runtime { info: info.clone(), environment });
  Ok(info)
}

/// The loaded runtime's environment, or an error when [`init_runtime`] has not succeeded.
pub(crate) fn environment() -> Result<&'static Environment, BackendError> {
  RUNTIME
    .get()
    .map(|r| &r.environment)
    .ok_or_else(|| load_error("ONNX Runtime is not loaded: call init first"))
}

/// What [`init_runtime`] loaded, if anything.
#[must_use]
pub fn runtime_info() -> Option<RuntimeInfo> {
  RUNTIME.get().map(|r| r.info.clone())
}
